"""The compiler of the match language: a route's ``match`` YAML node into a :class:`gateway.match.Predicate`.

The language is described in :mod:`gateway.match`; this module reads it from
YAML **nodes** (``yaml.compose``), so every error names its line and key
path, and reports **every** problem to the :class:`ErrorSink` (it keeps
going after the first), returning ``None`` when it reported any. It lives
with the configuration so that the rules (:mod:`gateway.match`) import no
YAML and nothing of the configuration.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Any, Iterable, Mapping, Protocol

import yaml

from gateway.config.durations import parse_duration
from gateway.interfaces import IMatchPredicate
from gateway.subject import PatternError
from gateway.suggest import did_you_mean
from gateway.tags import parse_path
from gateway.match import (
    All,
    AllOf,
    AnyOf,
    Any_,
    ContextText,
    DAY_NUMBERS,
    ElementCondition,
    ElementPattern,
    Empty,
    Exact,
    Glob,
    IpNetwork,
    ListenerCondition,
    MATCH_ALL,
    Not,
    NumberEquals,
    NumberRange,
    PluginPredicate,
    Predicate,
    Present,
    Regex,
    SourceIp,
    SubjectPattern,
    TimeOfDay,
    TimeRange,
    ValueTest,
    Values,
    Weekday,
    Within,
)
from gateway.values import (
    BINARY_VRS,
    GLOB_CHARS,
    NUMERIC_TEXT_VRS,
    NUMERIC_VRS,
    TEMPORAL_VRS,
    When,
    as_number,
    literal_kind,
    parse_when,
)

__all__ = ["ErrorSink", "compile_match"]


class ErrorSink(Protocol):
    """Where the compiler reports configuration errors (the loader's context)."""

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> object:
        """Record one error.

        :param node: the node the error is about (its ``start_mark.line`` names the line).
        :param key_path: the dotted key path (``routes[2].match.Modality``).
        :param message: what is wrong.
        :returns: anything (ignored).
        """
        ...

# YAML 1.1 core tags as the SafeLoader resolves plain scalars.
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"


# --------------------------------------------------------------------------
# The compiler
# --------------------------------------------------------------------------

_COMBINATORS = ("all", "any", "not")
_CONTEXT_KEYS = (
    "calling_ae_title",
    "called_ae_title",
    "source_ip",
    "listener",
    "tls_subject",
    "origin",
    "time_of_day",
    "weekday",
)
#: The values of the ``origin`` context key (:attr:`gateway.route.RoutingContext.origin`).
ORIGINS = ("dimse", "dicomweb", "retrieve")
_STRING_OPERATORS = ("equals", "glob", "regex")
_NUMERIC_OPERATORS = ("gt", "ge", "lt", "le")
_TEMPORAL_OPERATORS = ("after", "before", "within")
_OPERATORS = ("present", "empty", *_STRING_OPERATORS, *_NUMERIC_OPERATORS, "between", *_TEMPORAL_OPERATORS)


def _child(path: str, key: str) -> str:
    """``path.key`` (just ``key`` at the top)."""
    return f"{path}.{key}" if path else key


def _suggest(word: str, choices: Iterable[str]) -> str:
    """``; did you mean X?`` for a close choice, else empty."""
    hint = did_you_mean(word, choices)
    return f"; {hint}" if hint else ""


def _shown(node: yaml.Node) -> str:
    """Name a node's content for messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    return repr(node.value)


def _yaml_number(node: yaml.ScalarNode) -> object:
    """A scalar's number as YAML 1.1 reads it (``0x1F``, ``1_000``, ``.inf``), or its text.

    :param node: an int, float or string scalar.
    :returns: an int or float for numeric tags (None if unreadable), else the text.
    """
    if node.tag in (_INT, _FLOAT):
        try:
            constructor = yaml.constructor.SafeConstructor()
            return constructor.construct_yaml_int(node) if node.tag == _INT else constructor.construct_yaml_float(node)
        except (ValueError, yaml.YAMLError):
            return None
    if node.tag == _STR:
        return node.value.strip()
    return None


class _Compiler:
    """One compilation: the sink, the plugins and the error count."""

    def __init__(self, errors: ErrorSink, plugins: Mapping[str, IMatchPredicate] | None) -> None:
        self.sink = errors
        self.plugins = dict(plugins or {})
        self.count = 0

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        """Report one error and count it."""
        self.count += 1
        self.sink.error(node, path, message)

    # -- conditions --------------------------------------------------------

    def conditions(self, node: yaml.Node, path: str) -> Predicate | None:
        """A mapping of conditions (all must hold), or a plugin call."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping of conditions, got {_shown(node)}")
            return None
        keys = [key.value if isinstance(key, yaml.ScalarNode) else None for key, _ in node.value]
        if "plugin" in keys:
            return self.plugin(node, path)
        items: list[Predicate] = []
        seen: set[str] = set()
        ok = True
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
                self.error(key_node, path, f"a condition's key must be a name, got {_shown(key_node)}")
                ok = False
                continue
            key = str(key_node.value)
            key_path = _child(path, key)
            if key in seen:
                self.error(key_node, key_path, f"duplicate key '{key}' (put both conditions under all: [...])")
                ok = False
                continue
            seen.add(key)
            predicate = self.condition(key, key_node, value_node, key_path)
            if predicate is None:
                ok = False
            else:
                items.append(predicate)
        if not ok:
            return None
        if not items:
            return MATCH_ALL
        return items[0] if len(items) == 1 else All(tuple(items))

    def condition(self, key: str, key_node: yaml.Node, node: yaml.Node, path: str) -> Predicate | None:
        """One ``key: value`` condition."""
        if key in ("all", "any"):
            return self.combinator(key, node, path)
        if key == "not":
            inner = self.conditions(node, path)
            return None if inner is None else Not(inner)
        if key == "origin":
            return self.origin(node, path)
        if key in ("calling_ae_title", "called_ae_title", "tls_subject"):
            alternatives = self.string_alternatives(node, path, subject=key == "tls_subject")
            return None if alternatives is None else ContextText(key, alternatives)
        if key == "source_ip":
            return self.source_ip(node, path)
        if key == "listener":
            return self.listener(node, path)
        if key == "time_of_day":
            return self.time_of_day(node, path)
        if key == "weekday":
            return self.weekday(node, path)
        try:
            tag_path = parse_path(key)
        except ValueError as exc:
            message = str(exc)
            if "did you mean" not in message:
                hint = _suggest(key, (*_CONTEXT_KEYS, *_COMBINATORS, "plugin"))
                if hint:
                    message = f"unknown key '{key}'{hint}"
            self.error(key_node, path, message)
            return None
        pattern = self.pattern(node, path, tag_path.vr)
        return None if pattern is None else ElementCondition(tag_path, pattern)

    def combinator(self, key: str, node: yaml.Node, path: str) -> Predicate | None:
        """``all: [...]`` or ``any: [...]`` (a non-empty list of condition mappings)."""
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, f"'{key}' takes a list of conditions, got {_shown(node)}")
            return None
        if not node.value:
            outcome = "nothing" if key == "any" else "everything"
            self.error(node, path, f"'{key}: []' is empty (it would match {outcome})")
            return None
        items = [self.conditions(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if any(item is None for item in items):
            return None
        found = tuple(item for item in items if item is not None)
        return All(found) if key == "all" else Any_(found)

    def plugin(self, node: yaml.MappingNode, path: str) -> Predicate | None:
        """``{plugin: NAME, arg: value...}``: build the predicate through the named plugin."""
        name_node: yaml.Node | None = None
        arguments: dict[str, Any] = {}
        constructor = yaml.constructor.SafeConstructor()
        ok = True
        for key_node, value_node in node.value:
            if key_node.value == "plugin":
                name_node = value_node
                continue
            try:
                arguments[str(key_node.value)] = constructor.construct_object(value_node, deep=True)
            except yaml.YAMLError as exc:
                self.error(value_node, _child(path, str(key_node.value)), f"cannot read argument: {exc}")
                ok = False
        assert name_node is not None
        plugin_path = _child(path, "plugin")
        if not isinstance(name_node, yaml.ScalarNode) or name_node.tag != _STR:
            self.error(name_node, plugin_path, f"expected a plugin name, got {_shown(name_node)}")
            return None
        name = name_node.value
        plugin = self.plugins.get(name)
        if plugin is None:
            found = ", ".join(sorted(self.plugins)) or "none"
            hint = _suggest(name, self.plugins)
            self.error(name_node, plugin_path, f"unknown match plugin '{name}'{hint} (plugins found: {found})")
            return None
        if not ok:
            return None
        try:
            inner = plugin.compile(arguments)
        except ValueError as exc:
            self.error(name_node, plugin_path, f"plugin {name}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - a plugin's bug becomes a config error, not a traceback
            self.error(name_node, plugin_path, f"plugin {name} failed: {type(exc).__name__}: {exc}")
            return None
        return PluginPredicate(name, inner)

    # -- context keys ------------------------------------------------------

    def source_ip(self, node: yaml.Node, path: str) -> Predicate | None:
        """``source_ip``: a CIDR or a list of CIDRs."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            self.error(node, path, "empty list of networks")
            return None
        networks: list[IpNetwork] = []
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if isinstance(node, yaml.SequenceNode) else path
            if not isinstance(item, yaml.ScalarNode) or item.tag == _NULL:
                self.error(item, item_path, f"expected a CIDR such as 10.0.0.0/8, got {_shown(item)}")
                ok = False
                continue
            try:
                networks.append(ipaddress.ip_network(item.value.strip(), strict=False))
            except ValueError:
                self.error(
                    item, item_path, f"invalid network {item.value!r}; expected a CIDR such as 10.0.0.0/8 or fd00::/8"
                )
                ok = False
        return SourceIp(tuple(networks)) if ok else None

    def origin(self, node: yaml.Node, path: str) -> Predicate | None:
        """``origin``: how the instance came in, one of :data:`ORIGINS` or a list of them (issue 17).

        Plain names are checked (a misspelt origin would be a rule that never
        matches); ``{glob: ...}`` and ``{regex: ...}`` are taken as written.
        """
        names = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for item in names:
            if isinstance(item, yaml.ScalarNode) and item.tag == _STR and item.value not in ORIGINS:
                self.error(item, path, f"unknown origin {item.value!r}; expected one of {', '.join(ORIGINS)}{_suggest(item.value, ORIGINS)}")
                return None
        alternatives = self.string_alternatives(node, path)
        return None if alternatives is None else ContextText("origin", alternatives)

    def listener(self, node: yaml.Node, path: str) -> Predicate | None:
        """``listener``: names (string patterns) and ports (integers)."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            self.error(node, path, "empty list of listeners")
            return None
        names: list[tuple[ValueTest, ...]] = []
        ports: set[int] = set()
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if isinstance(node, yaml.SequenceNode) else path
            if isinstance(item, yaml.ScalarNode) and item.tag == _INT:
                port = _yaml_number(item)
                if not isinstance(port, int) or not 0 < port < 65536:
                    self.error(item, item_path, f"port {item.value} is out of range 1-65535")
                    ok = False
                else:
                    ports.add(port)
                continue
            tests = self.string_tests(item, item_path)
            if tests is None:
                ok = False
            else:
                names.append(tests)
        return ListenerCondition(tuple(names), frozenset(ports)) if ok else None

    def time_of_day(self, node: yaml.Node, path: str) -> Predicate | None:
        """``time_of_day: {between: ["07:00", "19:00"]}``."""
        pair = self.single_operator(node, path, "between", "time_of_day takes {between: [\"07:00\", \"19:00\"]}")
        if pair is None:
            return None
        bounds = self.pair(pair, _child(path, "between"))
        if bounds is None:
            return None
        times: list[int] = []
        for index, bound in enumerate(bounds):
            try:
                when = parse_when(bound.value.strip(), "TM", literal=True)
            except ValueError:
                when = None
            if not isinstance(when, int):
                message = f"invalid time {_shown(bound)}; expected HH:MM such as \"07:00\""
                self.error(bound, f"{path}.between[{index}]", message)
            else:
                times.append(when)
        if len(times) != 2:
            return None
        if times[0] == times[1]:
            self.error(pair, _child(path, "between"), "the window is empty (start equals end)")
            return None
        return TimeOfDay(times[0], times[1])

    def weekday(self, node: yaml.Node, path: str) -> Predicate | None:
        """``weekday: [Mon, Tue]`` or ``weekday: Mon-Fri``."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            self.error(node, path, "empty list of weekdays")
            return None
        days: set[int] = set()
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if isinstance(node, yaml.SequenceNode) else path
            text = item.value if isinstance(item, yaml.ScalarNode) and item.tag in (_STR, _BOOL) else None
            parts = text.split("-") if isinstance(text, str) else []
            numbers = [self.day_number(part) for part in parts]
            if not parts or len(parts) > 2 or None in numbers:
                message = f"invalid weekday {_shown(item)}; expected Mon..Sun or a range such as Mon-Fri"
                self.error(item, item_path, message)
                ok = False
                continue
            first, last = numbers[0], numbers[-1]
            assert first is not None and last is not None
            day = first
            while True:  # a range may wrap the week (Fri-Mon)
                days.add(day)
                if day == last:
                    break
                day = (day + 1) % 7
        return Weekday(frozenset(days)) if ok else None

    @staticmethod
    def day_number(text: str) -> int | None:
        """0 for Monday...; accepts Mon or Monday in any case."""
        return DAY_NUMBERS.get(text.strip().lower())

    # -- patterns ----------------------------------------------------------

    def string_alternatives(
        self, node: yaml.Node, path: str, subject: bool = False
    ) -> tuple[tuple[ValueTest, ...], ...] | None:
        """String patterns for a context key: one, or a list of them (any of).

        :param subject: ``tls_subject``: scalars and ``glob`` are certificate
            name patterns (:class:`SubjectPattern`), not string globs.
        """
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                self.error(node, path, "empty list (it would match nothing)")
                return None
            alternatives = [self.string_tests(item, f"{path}[{i}]", subject) for i, item in enumerate(node.value)]
            if any(alt is None for alt in alternatives):
                return None
            return tuple(alt for alt in alternatives if alt is not None)
        tests = self.string_tests(node, path, subject)
        return None if tests is None else (tests,)

    def subject_pattern(self, node: yaml.Node, path: str) -> ValueTest | None:
        """A ``tls_subject`` name pattern, validated now (a typo is an error, not a rule that never matches)."""
        try:
            return SubjectPattern(str(node.value).strip(" "))
        except PatternError as exc:
            self.error(node, path, f"not a certificate subject pattern: {exc}")
            return None

    def string_tests(self, node: yaml.Node, path: str, subject: bool = False) -> tuple[ValueTest, ...] | None:
        """One string pattern: a scalar (exact or glob) or ``{equals|glob|regex: ...}``."""
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _NULL:
                self.error(node, path, "expected a string pattern, got nothing (null)")
                return None
            if subject:
                test = self.subject_pattern(node, path)
                return None if test is None else (test,)
            return (self.scalar_test(node, path, numeric_ok=False),)
        if isinstance(node, yaml.MappingNode):
            tests: list[ValueTest] = []
            ok = True
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key not in _STRING_OPERATORS:
                    hint = _suggest(key, _STRING_OPERATORS)
                    message = f"unknown string operator '{key}'{hint} (use equals, glob or regex)"
                    self.error(key_node, _child(path, key), message)
                    ok = False
                    continue
                if subject and key == "glob" and isinstance(value_node, yaml.ScalarNode) and value_node.tag != _NULL:
                    test = self.subject_pattern(value_node, _child(path, key))
                else:
                    test = self.string_operator(key, value_node, _child(path, key))
                if test is None:
                    ok = False
                else:
                    tests.append(test)
            if ok and not tests:
                self.error(node, path, "empty pattern")
                return None
            return tuple(tests) if ok else None
        self.error(node, path, f"expected a string pattern, got {_shown(node)}")
        return None

    def scalar_test(self, node: yaml.ScalarNode, path: str, numeric_ok: bool) -> ValueTest:
        """A bare scalar: glob when it holds a metacharacter, a number when unquoted numeric, else exact."""
        text = node.value
        if numeric_ok and node.tag in (_INT, _FLOAT):
            number = as_number(_yaml_number(node))
            if number is not None:
                return NumberEquals(number, text)
        if node.tag == _STR and GLOB_CHARS & set(text):
            return Glob(text)
        # Booleans, timestamps and numbers where a string is wanted: the text as written
        # (YAML 1.1 reads NO as false; the value in the file is what the rule means).
        return Exact(text.strip(" "))

    def string_operator(self, key: str, node: yaml.Node, path: str) -> ValueTest | None:
        """``equals``, ``glob`` or ``regex`` with its string."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.error(node, path, f"'{key}' takes a string, got {_shown(node)}")
            return None
        text = node.value
        if key == "equals":
            return Exact(text)
        if key == "glob":
            return Glob(text)
        try:
            return Regex(text)
        except re.error as exc:
            self.error(node, path, f"invalid regular expression {text!r}: {exc}")
            return None

    def pattern(self, node: yaml.Node, path: str, vr: str | None) -> ElementPattern | None:
        """A value pattern on an element of dictionary VR ``vr`` (None: unknown/private)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                self.error(node, path, "empty list (it would match nothing)")
                return None
            items = [self.pattern(item, f"{path}[{i}]", vr) for i, item in enumerate(node.value)]
            if any(item is None for item in items):
                return None
            return AnyOf(tuple(item for item in items if item is not None))
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _NULL:
                message = "expected a value pattern, got nothing (null); write {present: true} or {empty: true}"
                self.error(node, path, message)
                return None
            if not self.values_allowed(node, path, vr, "a value"):
                return None
            return Values((self.scalar_test(node, path, numeric_ok=True),))
        assert isinstance(node, yaml.MappingNode)
        return self.operators(node, path, vr)

    def values_allowed(self, node: yaml.Node, path: str, vr: str | None, what: str) -> bool:
        """Refuse value tests on sequences and binary VRs (only present/empty apply)."""
        if vr == "SQ" or vr in BINARY_VRS:
            message = f"{what} cannot be compared with a {vr} element; use {{present: ...}} or {{empty: ...}}"
            self.error(node, path, message)
            return False
        return True

    def operators(self, node: yaml.MappingNode, path: str, vr: str | None) -> ElementPattern | None:
        """A mapping of operators: all must hold; value tests hold for one same value."""
        patterns: list[ElementPattern] = []
        tests: list[ValueTest] = []
        ok = True
        for key_node, value_node in node.value:
            key = str(key_node.value)
            op_path = _child(path, key)
            if key not in _OPERATORS:
                hint = _suggest(key, _OPERATORS)
                listing = "" if hint else f" (operators: {', '.join(_OPERATORS)})"
                self.error(key_node, op_path, f"unknown pattern operator '{key}'{hint}{listing}")
                ok = False
                continue
            if key in ("present", "empty"):
                if not isinstance(value_node, yaml.ScalarNode) or value_node.tag != _BOOL:
                    self.error(value_node, op_path, f"'{key}' takes true or false, got {_shown(value_node)}")
                    ok = False
                    continue
                flag = value_node.value.lower() in ("yes", "true", "on", "y")
                patterns.append(Present(flag) if key == "present" else Empty(flag))
                continue
            if not self.values_allowed(key_node, op_path, vr, f"'{key}'"):
                ok = False
                continue
            if key in _STRING_OPERATORS:
                test = self.string_operator(key, value_node, op_path)
            elif key in _NUMERIC_OPERATORS or (key == "between" and self.numeric_between(value_node, vr)):
                test = self.numeric(key, key_node, value_node, op_path, vr)
            else:
                test = self.temporal(key, key_node, value_node, op_path, vr)
            if test is None:
                ok = False
            else:
                tests.append(test)
        if not ok:
            return None
        if not patterns and not tests:
            self.error(node, path, "empty pattern (write {present: true} to test presence)")
            return None
        if tests:
            patterns.append(Values(tuple(tests)))
        return patterns[0] if len(patterns) == 1 else AllOf(tuple(patterns))

    @staticmethod
    def numeric_between(node: yaml.Node, vr: str | None) -> bool:
        """Whether ``between`` is numeric here (numeric VR, or numbers given for an unknown VR)."""
        if vr in TEMPORAL_VRS:
            return False
        if vr is not None:
            return True
        return isinstance(node, yaml.SequenceNode) and all(
            isinstance(item, yaml.ScalarNode) and item.tag in (_INT, _FLOAT) for item in node.value
        )

    def pair(self, node: yaml.Node, path: str) -> list[yaml.ScalarNode] | None:
        """The two scalar bounds of ``between``."""
        if (not isinstance(node, yaml.SequenceNode) or len(node.value) != 2
                or not all(isinstance(item, yaml.ScalarNode) and item.tag != _NULL for item in node.value)):
            self.error(node, path, f"'between' takes a list of two bounds [low, high], got {_shown(node)}")
            return None
        return list(node.value)

    def single_operator(self, node: yaml.Node, path: str, key: str, usage: str) -> yaml.Node | None:
        """The value of a one-key mapping ``{key: value}``."""
        if not isinstance(node, yaml.MappingNode) or len(node.value) != 1 or node.value[0][0].value != key:
            where = node.value[0][0] if isinstance(node, yaml.MappingNode) and node.value else node
            self.error(where, path, usage)
            return None
        value: yaml.Node = node.value[0][1]
        return value

    def numeric(self, key: str, key_node: yaml.Node, node: yaml.Node, path: str, vr: str | None) -> ValueTest | None:
        """``gt``/``ge``/``lt``/``le``/``between`` on a numeric (or numeric-looking text) element."""
        if vr is not None and vr not in NUMERIC_VRS and vr not in NUMERIC_TEXT_VRS:
            extra = " (use after/before/between with dates)" if vr in TEMPORAL_VRS else ""
            self.error(key_node, path, f"numeric operator '{key}' cannot be used on a {vr} element{extra}")
            return None
        bounds = self.pair(node, path) if key == "between" else [node]
        if bounds is None:
            return None
        numbers: list[Decimal] = []
        for bound in bounds:
            number = as_number(_yaml_number(bound)) if isinstance(bound, yaml.ScalarNode) else None
            if number is None:
                self.error(bound, path, f"'{key}' takes a number, got {_shown(bound)}")
                return None
            numbers.append(number)
        if key == "between":
            if numbers[0] > numbers[1]:
                self.error(node, path, f"'between' bounds are reversed ({numbers[0]} > {numbers[1]})")
                return None
            return NumberRange(numbers[0], True, numbers[1], True)
        if key in ("gt", "ge"):
            return NumberRange(lower=numbers[0], lower_inclusive=key == "ge")
        return NumberRange(upper=numbers[0], upper_inclusive=key == "le")

    def temporal(self, key: str, key_node: yaml.Node, node: yaml.Node, path: str, vr: str | None) -> ValueTest | None:
        """``after``/``before``/``between``/``within`` on a DA, TM or DT element."""
        if vr is not None and vr not in TEMPORAL_VRS:
            self.error(key_node, path, f"date/time operator '{key}' cannot be used on a {vr} element (only DA, TM, DT)")
            return None
        if key == "within":
            return self.within(node, path, vr)
        bounds = self.pair(node, path) if key == "between" else [node]
        if bounds is None:
            return None
        if any(not isinstance(b, yaml.ScalarNode) or b.tag == _NULL for b in bounds):
            self.error(node, path, f"'{key}' takes a date or time, got {_shown(node)}")
            return None
        kind = vr or literal_kind(bounds[0].value.strip())
        instants: list[When] = []
        for bound in bounds:
            try:
                instants.append(parse_when(bound.value.strip(), kind, literal=True))
            except ValueError:
                example = {"DA": '"20240131"', "TM": '"07:00"', "DT": '"20240131073000"'}[kind]
                self.error(bound, path, f"invalid {kind} literal {bound.value!r}; expected e.g. {example}")
                return None
        if key == "between":
            if instants[0] > instants[1]:  # type: ignore[operator]
                self.error(node, path, "'between' bounds are reversed")
                return None
            return TimeRange(kind, instants[0], True, instants[1], True)
        if key == "after":
            return TimeRange(kind, lower=instants[0], lower_inclusive=False)
        return TimeRange(kind, upper=instants[0], upper_inclusive=False)

    def within(self, node: yaml.Node, path: str, vr: str | None) -> ValueTest | None:
        """``within: 7d``: a DA/DT value in the window ending at ``received_at``."""
        if vr == "TM":
            self.error(node, path, "'within' applies to DA and DT elements, not TM (use time_of_day for windows)")
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_STR, _INT, _FLOAT):
            self.error(node, path, f"'within' takes a duration such as 7d, got {_shown(node)}")
            return None
        try:
            seconds = parse_duration(node.value if node.tag == _STR else float(node.value))
        except ValueError as exc:
            self.error(node, path, str(exc))
            return None
        return Within(vr or "DA", seconds)


def compile_match(
    node: yaml.Node,
    path: str,
    errors: ErrorSink,
    plugins: Mapping[str, IMatchPredicate] | None = None,
) -> Predicate | None:
    """Compile a route's ``match`` node into a predicate.

    :param node: the ``match`` value node (from ``yaml.compose``, SafeLoader).
    :param path: its key path, such as ``routes[2].match``.
    :param errors: where every error found is reported (compilation goes on
        after the first).
    :param plugins: match predicate plugins by name.
    :returns: the predicate (:data:`MATCH_ALL` for an empty mapping), or
        ``None`` when errors were reported.
    """
    compiler = _Compiler(errors, plugins)
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        compiler.error(node, path, "match is empty; leave it out (or write {}) to match everything")
        return None
    result = compiler.conditions(node, path)
    return None if compiler.count else result
