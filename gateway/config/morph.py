"""The compiler of a route's ``morph:`` list into a :class:`gateway.morph.MorphPlan`, and back from its journaled form.

Compilation happens once, at configuration load (:func:`compile_morph`); it
reports every problem to the loader's error sink (unknown keywords with a
"did you mean", bad regexes, literals that can never be valid for their VR,
a missing lookup table) and never raises. A journaled plan (canonical JSON,
see :mod:`gateway.morph`) is rebuilt by the same compiler
(:func:`compile_canonical`), so a queued copy is made with the meaning it
was queued with. It lives with the configuration so that the rules
(:mod:`gateway.morph`, :mod:`gateway.deidentify`) import no YAML and nothing
of the configuration.
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Any, Mapping, Protocol, Sequence

import yaml
from yaml.constructor import SafeConstructor

from gateway.tags import TagPath, parse_path
from gateway.template import Template
from gateway.suggest import did_you_mean
from gateway.uidremap import check_root
from gateway import deidentify
from gateway.morph import (
    CopyAction,
    DateShiftAction,
    DeleteAction,
    DeletePattern,
    FIRST_PIXEL_TAG,
    HashAction,
    LookupAction,
    MorphPlan,
    PLAN_VERSION,
    PlanError,
    PluginAction,
    ReplaceAction,
    SetAction,
    UidRemapAction,
    canonical_json,
)
from gateway.vr import FLOAT_VRS, INT_RANGES, SINGLE_VALUED, TEXT_VRS, check_value

__all__ = ["ErrorSink", "compile_morph", "compile_canonical", "plain"]


class ErrorSink(Protocol):
    """Where compile errors go (the configuration loader's context)."""

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> Any:
        """Record one configuration error at ``node``'s line."""


# ---------------------------------------------------------------------------
# Compilation from YAML
# ---------------------------------------------------------------------------

_constructor = SafeConstructor()


def plain(node: yaml.Node) -> Any:
    """A YAML node's plain Python value (str, int, float, bool, None, list, dict).

    Each call builds new objects: the constructor's per-node cache is
    emptied afterwards, so it does not keep every node of every
    configuration (and every journaled plan rebuilt at send time) alive, and
    two callers never share (and mutate) one value.

    :param node: a node from ``yaml.compose`` (SafeLoader).
    :returns: the value.
    """
    try:
        return _constructor.construct_object(node, deep=True)
    finally:
        _constructor.constructed_objects.clear()
        _constructor.recursive_objects.clear()


def _items(node: yaml.MappingNode) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """``(key text, key node, value node)`` of a mapping."""
    return [(str(plain(k)), k, v) for k, v in node.value]

_MASK = re.compile(r"^\(?\s*([0-9A-Fa-fxX]{4})\s*,\s*([0-9A-Fa-fxX]{4})\s*\)?$")


def _mask_pattern(text: str) -> tuple[int, int] | None:
    """``(value, mask)`` of a wildcard tag such as ``(0009,xxxx)``, ``(0019,10xx)``, ``(50xx,xxxx)``."""
    m = _MASK.match(text.strip())
    if not m or "x" not in (m.group(1) + m.group(2)).lower():
        return None
    value = mask = 0
    for char in (m.group(1) + m.group(2)).lower():
        value <<= 4
        mask <<= 4
        if char != "x":
            value |= int(char, 16)
            mask |= 0xF
    return value, mask


class _Compiler:
    """Compiles one route's ``morph:`` list, reporting to the error sink."""

    def __init__(self, errors: ErrorSink, plugins: Mapping[str, Any], base_dir: str, journaled: bool = False) -> None:
        self.errors = errors
        self.plugins = plugins
        self.base_dir = base_dir
        #: Compiling a journaled plan (:func:`compile_canonical`), not a configuration file.
        self.journaled = journaled
        self.ok = True

    def fail(self, node: yaml.Node | None, key: str, message: str) -> None:
        self.ok = False
        self.errors.error(node, key, message)

    # -- helpers -----------------------------------------------------------
    def path(self, node: yaml.Node, key: str, *, writable: bool = False) -> TagPath | None:
        text = plain(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(text, str):
            self.fail(node, key, "expected an element name (keyword, tag or path)")
            return None
        try:
            path = parse_path(text)
        except ValueError as e:
            self.fail(node, key, str(e))
            return None
        if writable and path.last.creator is None and path.last.tag >= FIRST_PIXEL_TAG:
            self.fail(node, key, f"'{text}': elements at or after the pixel data cannot be set")
            return None
        return path

    def mapping(self, node: yaml.Node, key: str, required: Sequence[str], optional: Sequence[str]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"expected a mapping with {', '.join(required)}")
            return None
        found: dict[str, yaml.Node] = {}
        good = True
        for name, key_node, value in _items(node):
            if name not in required and name not in optional:
                self.fail(key_node, f"{key}.{name}", f"unknown key (expected {', '.join([*required, *optional])})")
                good = False
            found[name] = value
        for name in required:
            if name not in found:
                self.fail(node, key, f"missing '{name}'")
                good = False
        return found if good else None

    def string(self, node: yaml.Node, key: str, allow_empty: bool = False) -> str | None:
        value = plain(node)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(node, key, "expected a string")
            return None
        text = str(value)
        if not text and not allow_empty:
            self.fail(node, key, "must not be empty")
            return None
        return text

    def salt(self, node: yaml.Node | None, key: str) -> str | None:
        if node is None:
            return None
        return self.string(node, key)

    def tag_set(self, node: yaml.Node | None, key: str, vrs: Sequence[str]) -> frozenset[int] | None:
        if node is None:
            return frozenset()
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "expected a list of elements")
            return None
        tags: set[int] = set()
        for index, item in enumerate(node.value):
            path = self.path(item, f"{key}[{index}]")
            if path is None:
                continue
            vr = path.vr
            if vr is not None and vr not in vrs:
                self.fail(item, f"{key}[{index}]", f"'{path}' is {vr}, not {'/'.join(vrs)}")
                continue
            tags.add(path.last.tag)
        return frozenset(tags)

    def vr_for(self, path: TagPath, vr_node: yaml.Node | None, node: yaml.Node, key: str) -> str | None:
        explicit = None if vr_node is None else self.string(vr_node, f"{key}.vr")
        dictionary = path.vr
        if explicit is not None:
            explicit = explicit.upper()
            if explicit not in TEXT_VRS and explicit not in INT_RANGES and explicit not in FLOAT_VRS and explicit != "AT":
                self.fail(vr_node, f"{key}.vr", f"VR {explicit} cannot be set from configuration")
                return None
            if dictionary is not None and explicit not in dictionary.split(" or "):
                self.fail(vr_node, f"{key}.vr", f"'{path}' is {dictionary} in PS3.6, not {explicit}")
                return None
            return explicit
        if dictionary is None:
            self.fail(node, key, f"'{path}' is not in the data dictionary: give its VR ({{value: ..., vr: LO}})")
            return None
        vr = dictionary.split(" or ")[0]
        if vr == "SQ" or vr not in TEXT_VRS | set(INT_RANGES) | FLOAT_VRS | {"AT"}:
            self.fail(node, key, f"'{path}' is {dictionary}; only text and number elements can be set")
            return None
        return vr

    def literal_check(self, template: Template, vr: str, node: yaml.Node, key: str) -> bool:
        if template.is_literal:
            problem = check_value(vr, template.source.replace("{{", "{").replace("}}", "}"))
            if problem:
                self.fail(node, key, problem)
                return False
        return True

    # -- actions -----------------------------------------------------------
    def compile_set(self, node: yaml.Node, key: str) -> list[Any]:
        if not isinstance(node, yaml.MappingNode) or not node.value:
            self.fail(node, key, "expected a mapping of element: value")
            return []
        actions: list[Any] = []
        for name, key_node, value_node in _items(node):
            where = f"{key}.{name}"
            path = self.path(key_node, where, writable=True)
            if path is None:
                continue
            vr_node = None
            if isinstance(value_node, yaml.MappingNode):
                parts = self.mapping(value_node, where, ["value"], ["vr"])
                if parts is None:
                    continue
                value_node, vr_node = parts["value"], parts.get("vr")
            vr = self.vr_for(path, vr_node, key_node, where)
            if vr is None:
                continue
            value_nodes = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            templates: list[Template] = []
            for value_item in value_nodes:
                raw = plain(value_item)
                if raw is None:
                    raw = ""
                if isinstance(raw, (dict, list)) or isinstance(raw, bool):
                    self.fail(value_item, where, "expected a text or number value")
                    break
                try:
                    template = Template.parse(str(raw))
                except ValueError as e:
                    self.fail(value_item, where, str(e))
                    break
                if not self.literal_check(template, vr, value_item, where):
                    break
                templates.append(template)
            else:
                if len(templates) > 1 and vr in SINGLE_VALUED:
                    self.fail(value_node, where, f"{vr} holds a single value")
                    continue
                actions.append(SetAction(path, vr, tuple(templates)))
        return actions

    def compile_delete(self, node: yaml.Node, key: str) -> list[Any]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        patterns: list[DeletePattern] = []
        for index, item in enumerate(items):
            where = f"{key}[{index}]" if isinstance(node, yaml.SequenceNode) else key
            if isinstance(item, yaml.MappingNode):
                spec = plain(item)
                if spec == {"private": "all"}:
                    patterns.append(DeletePattern(private=True, text="private: all"))
                elif set(spec) == {"group"} and re.match(r"^[0-9A-Fa-f]{4}$", str(spec["group"])):
                    group = int(str(spec["group"]), 16)
                    if group in (0x0000, 0x0002, 0xFFFE):
                        self.fail(item, where, f"group {group:04X} is not part of a data set")
                        continue
                    patterns.append(DeletePattern(value=group << 16, mask=0xFFFF0000, text=f"group {group:04X}"))
                else:
                    self.fail(item, where, 'expected an element, a wildcard tag, {private: all} or {group: "gggg"}')
                continue
            text = plain(item)
            if not isinstance(text, str):
                self.fail(item, where, "expected an element name")
                continue
            masked = _mask_pattern(text)
            if masked is not None:
                patterns.append(DeletePattern(value=masked[0], mask=masked[1], text=text))
                continue
            path = self.path(item, where)
            if path is None:
                continue
            if path.last.creator is None and path.last.tag >= FIRST_PIXEL_TAG:
                if path.last.tag in (0x7FE00008, 0x7FE00009, 0x7FE00010):
                    self.fail(item, where, "pixel data cannot be deleted by a morph")
                    continue
                # An exact tag after the pixel data: a one-tag wildcard reaches the tail.
                patterns.append(DeletePattern(value=path.last.tag, mask=0xFFFFFFFF, text=text))
                continue
            patterns.append(DeletePattern(path=path, text=text))
        return [DeleteAction(tuple(patterns))] if patterns else []

    def compile_replace(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["tag", "pattern", "with"], [])
        if parts is None:
            return []
        path = self.path(parts["tag"], f"{key}.tag")
        pattern_text = self.string(parts["pattern"], f"{key}.pattern")
        replacement = self.string(parts["with"], f"{key}.with", allow_empty=True)
        if path is None or pattern_text is None or replacement is None:
            return []
        try:
            pattern = re.compile(pattern_text)
        except re.error as e:
            self.fail(parts["pattern"], f"{key}.pattern", f"bad regular expression: {e}")
            return []
        for ref in re.findall(r"\\(\d+)|\\g<([^>]*)>", replacement):
            number, name = ref
            group = number or name
            if (group.isdigit() and int(group) > pattern.groups) or (not group.isdigit() and group not in pattern.groupindex):
                self.fail(parts["with"], f"{key}.with", f"refers to group {group}, which the pattern does not have")
                return []
        return [ReplaceAction(path, pattern, replacement)]

    def compile_copy(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["from", "to"], ["vr"])
        if parts is None:
            return []
        source = self.path(parts["from"], f"{key}.from")
        target = self.path(parts["to"], f"{key}.to", writable=True)
        if source is None or target is None:
            return []
        vr = self.vr_for(target, parts.get("vr"), parts["to"], f"{key}.to")
        return [] if vr is None else [CopyAction(source, target, vr)]

    def compile_uid_remap(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["salt"], ["root", "tags"])
        if parts is None:
            return []
        root = "2.25" if "root" not in parts else self.string(parts["root"], f"{key}.root")
        salt = self.salt(parts["salt"], f"{key}.salt")
        tags = self.tag_set(parts.get("tags"), f"{key}.tags", ["UI"])
        if root is None or salt is None or tags is None:
            return []
        problem = check_root(root)
        if problem:
            self.fail(parts.get("root"), f"{key}.root", problem)
            return []
        return [UidRemapAction(root, salt, tags)]

    def compile_hash(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["tag", "salt"], ["length", "encoding"])
        if parts is None:
            return []
        path = self.path(parts["tag"], f"{key}.tag", writable=True)
        salt = self.salt(parts["salt"], f"{key}.salt")
        length = 16 if "length" not in parts else plain(parts["length"])
        encoding = "hex" if "encoding" not in parts else plain(parts["encoding"])
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 64:
            self.fail(parts.get("length"), f"{key}.length", "expected a whole number from 1 to 64")
            return []
        if encoding not in ("hex", "base32"):
            self.fail(parts.get("encoding"), f"{key}.encoding", "expected hex or base32")
            return []
        if path is None or salt is None:
            return []
        if path.vr is not None and path.vr not in ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"):
            self.fail(parts["tag"], f"{key}.tag", f"'{path}' is {path.vr}: a pseudonym is only valid in a text VR")
            return []
        return [HashAction(path, salt, length, encoding)]

    def compile_date_shift(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["salt"], ["max_days", "tags"])
        if parts is None:
            return []
        salt = self.salt(parts["salt"], f"{key}.salt")
        max_days = 365 if "max_days" not in parts else plain(parts["max_days"])
        if not isinstance(max_days, int) or isinstance(max_days, bool) or not 1 <= max_days <= 36500:
            self.fail(parts.get("max_days"), f"{key}.max_days", "expected a whole number of days from 1 to 36500")
            return []
        tags = self.tag_set(parts.get("tags"), f"{key}.tags", ["DA", "DT"])
        if salt is None or tags is None:
            return []
        return [DateShiftAction(salt, max_days, tags)]

    def compile_lookup(self, node: yaml.Node, key: str) -> list[Any]:
        # A route names a CSV file; the journaled form carries the rows the
        # file had at load (``rows``), so a later edit of the file cannot
        # change the copies already queued.
        if self.journaled:
            parts = self.mapping(node, key, ["tag", "rows"], ["default", "table"])
        else:
            parts = self.mapping(node, key, ["tag", "table"], ["default"])
        if parts is None:
            return []
        path = self.path(parts["tag"], f"{key}.tag", writable=True)
        default = None if "default" not in parts else self.string(parts["default"], f"{key}.default", allow_empty=True)
        rows: list[list[str]]
        if self.journaled:
            table_node = parts["rows"]
            table_name: str | None = "" if "table" not in parts else self.string(parts["table"], f"{key}.table", allow_empty=True)
            given = plain(table_node)
            if not isinstance(given, list) or not all(
                isinstance(row, list) and all(isinstance(cell, str) for cell in row) for row in given
            ):
                self.fail(table_node, f"{key}.rows", "expected a list of [from, to] rows")
                return []
            rows = given
        else:
            table_node = parts["table"]
            table_name = self.string(table_node, f"{key}.table")
            if path is None or table_name is None:
                return []
            full = os.path.join(self.base_dir, table_name)
            try:
                with open(full, newline="", encoding="utf-8") as f:
                    rows = [row for row in csv.reader(f) if row and not row[0].startswith("#")]
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                self.fail(table_node, f"{key}.table", f"cannot read lookup table {full}: {getattr(e, 'strerror', None) or e}")
                return []
            if rows and [c.strip().lower() for c in rows[0]] == ["from", "to"]:
                rows = rows[1:]
        if path is None or table_name is None:
            return []
        vr = path.vr
        pairs: list[tuple[str, str]] = []
        for number, row in enumerate(rows, 1):
            if len(row) != 2:
                self.fail(table_node, f"{key}.table", f"{table_name} row {number}: expected two columns (from,to)")
                return []
            target = row[1].strip()
            problem = check_value(vr, target) if vr else None
            if problem:
                self.fail(table_node, f"{key}.table", f"{table_name} row {number}: {problem}")
                return []
            pairs.append((row[0].strip(), target))
        if default is not None and vr and check_value(vr, default):
            self.fail(parts["default"], f"{key}.default", str(check_value(vr, default)))
            return []
        return [LookupAction(path, tuple(pairs), default, table_name)]

    def compile_deidentify(self, node: yaml.Node, key: str) -> list[Any]:
        spec = plain(node)
        action = None
        try:
            action = deidentify.compile_profile(spec)
        except ValueError as e:
            self.fail(node, key, str(e))
        return [] if action is None else [action]

    def compile_plugin(self, item: yaml.MappingNode, key: str) -> list[Any]:
        # A copy: plain() caches what it builds per node, and the journaled
        # definition of this action is that same mapping, "plugin" included.
        spec = dict(plain(item))
        name = spec.pop("plugin")
        plugin = self.plugins.get(name) if isinstance(name, str) else None
        if plugin is None:
            known = ", ".join(sorted(self.plugins)) or "none installed"
            self.fail(item, f"{key}.plugin", f"unknown morph plugin {name!r} (known: {known})")
            return []
        try:
            action = plugin.compile(spec)
        except ValueError as e:
            self.fail(item, f"{key}.plugin", f"{name}: {e}")
            return []
        return [PluginAction(name, action)]

_ACTIONS = ("set", "delete", "replace", "copy", "uid_remap", "hash", "date_shift", "lookup", "deidentify")


def compile_morph(
    node: yaml.Node,
    path: str,
    errors: ErrorSink,
    plugins: Mapping[str, Any] | None = None,
    *,
    base_dir: str = "",
    journaled: bool = False,
) -> MorphPlan | None:
    """Compile a route's ``morph:`` list.

    The plan also gets its journaled form (:attr:`MorphPlan.canonical`), and
    that form is compiled back and compared with the plan: a morph whose
    journaled form would not give the same plan is a configuration error
    here, never a surprise when a queued copy is made.

    :param node: the list's node (from ``yaml.compose``).
    :param path: its key path (``routes[2].morph``) for messages.
    :param errors: the sink every problem goes to.
    :param plugins: morph plugins by name (:class:`gateway.interfaces.IMorphAction` providers).
    :param base_dir: the directory lookup table paths are relative to (the config file's).
    :param journaled: the list is a journaled plan's (:func:`compile_canonical`):
        lookup tables are inline rows, and no journaled form is made.
    :returns: the plan, or None when anything was wrong (all problems reported).
    """
    compiler = _Compiler(errors, plugins or {}, base_dir, journaled)
    if not isinstance(node, yaml.SequenceNode):
        compiler.fail(node, path, "expected a list of actions")
        return None
    actions: list[Any] = []
    items: list[Any] = []
    for index, item in enumerate(node.value):
        key = f"{path}[{index}]"
        if isinstance(item, yaml.MappingNode) and any(str(plain(k)) == "plugin" for k, _ in item.value):
            compiled = compiler.compile_plugin(item, key)
            actions += compiled
            items.append(plain(item))
            continue
        if not isinstance(item, yaml.MappingNode) or len(item.value) != 1:
            compiler.fail(item, key, f"each action is a mapping with one key ({', '.join(_ACTIONS)}, or plugin)")
            continue
        name, key_node, value = _items(item)[0]
        if name not in _ACTIONS:
            close = did_you_mean(name, _ACTIONS)
            hint = f"; {close}" if close else f" (expected {', '.join(_ACTIONS)} or plugin)"
            compiler.fail(key_node, f"{key}.{name}", f"unknown morph action{hint}")
            continue
        compiled = getattr(compiler, f"compile_{name}")(value, f"{key}.{name}")
        actions += compiled
        if compiled and not journaled:
            items.append(_definition(name, value, compiled[-1]))
    if not compiler.ok:
        return None
    if journaled:
        return MorphPlan(tuple(actions))
    try:
        canonical = canonical_json(items)
        rebuilt = compile_canonical(canonical, plugins or {})
    except (TypeError, ValueError) as e:
        compiler.fail(node, path, f"this morph cannot be journaled with the entries it queues: {e}")
        return None
    if not _same_actions(rebuilt.actions, tuple(actions)):
        compiler.fail(node, path, "this morph does not compile to the same plan from its journaled form (please report)")
        return None
    return MorphPlan(tuple(actions), canonical)


def _definition(name: str, value: yaml.Node, action: Any) -> dict[str, Any]:
    """One built-in action's journaled definition (see the block comment above)."""
    if name == "set":
        assert isinstance(value, yaml.MappingNode)
        return {"set": [[plain(k), plain(v)] for k, v in value.value]}
    if name == "lookup":
        spec = plain(value)
        definition = {"tag": spec["tag"], "rows": [list(pair) for pair in action.table], "table": action.source}
        if "default" in spec:
            definition["default"] = spec["default"]
        return {"lookup": definition}
    return {name: plain(value)}


def _same_actions(left: Sequence[Any], right: Sequence[Any]) -> bool:
    """Whether two compiled action lists are the same plan (a plugin's action: the same plugin).

    A plugin's action need not be comparable; its definition (name and
    arguments) is journaled as written, so the same plugin is enough.
    """
    if len(left) != len(right):
        return False
    for a, b in zip(left, right):
        if isinstance(a, PluginAction) and isinstance(b, PluginAction):
            if a.name != b.name:
                return False
        elif a != b:
            return False
    return True

_NODE_TAGS: dict[type, str] = {
    bool: "tag:yaml.org,2002:bool",
    int: "tag:yaml.org,2002:int",
    float: "tag:yaml.org,2002:float",
    str: "tag:yaml.org,2002:str",
}


def _node(value: Any) -> yaml.Node:
    """A YAML node holding ``value`` (JSON types), for the compiler that reads nodes."""
    if value is None:
        return yaml.ScalarNode("tag:yaml.org,2002:null", "null")
    if isinstance(value, bool):
        return yaml.ScalarNode(_NODE_TAGS[bool], "true" if value else "false")
    if isinstance(value, (int, float, str)):
        return yaml.ScalarNode(_NODE_TAGS[type(value)], repr(value) if isinstance(value, float) else str(value))
    if isinstance(value, list):
        return yaml.SequenceNode("tag:yaml.org,2002:seq", [_node(v) for v in value])
    if isinstance(value, dict):
        return yaml.MappingNode("tag:yaml.org,2002:map", [(_node(k), _node(v)) for k, v in value.items()])
    raise PlanError(f"unexpected {type(value).__name__} in a journaled plan")


def _action_node(item: Any) -> yaml.Node:
    """One journaled action as the node its YAML form would give (``set`` pairs become a mapping again)."""
    if isinstance(item, dict) and set(item) == {"set"} and isinstance(item["set"], list):
        pairs = item["set"]
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
            raise PlanError("set: expected [element, value] pairs")
        return yaml.MappingNode(
            "tag:yaml.org,2002:map",
            [(_node("set"), yaml.MappingNode("tag:yaml.org,2002:map", [(_node(k), _node(v)) for k, v in pairs]))],
        )
    return _node(item)


class _Messages:
    """An :class:`ErrorSink` that keeps the messages (no file, no line: a journaled plan has neither)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> None:
        """Keep one message."""
        self.messages.append(f"{key_path}: {message}")


def compile_canonical(canonical: str, plugins: Mapping[str, Any]) -> MorphPlan:
    """Rebuild a plan from its journaled form, with the compiler the configuration uses.

    :param canonical: the text :func:`canonical_json` made (read from the journal).
    :param plugins: the morph plugins installed now (a plugin the plan names
        may be gone).
    :returns: the plan (:attr:`MorphPlan.canonical` is ``canonical``).
    :raises PlanError: when the text is not a plan this version reads, or
        the plan does not compile (a plugin is gone, an argument is refused).
    """
    try:
        document = json.loads(canonical)
    except ValueError as e:
        raise PlanError(f"the journaled plan is not JSON: {e}") from None
    if not isinstance(document, dict) or set(document) != {"v", "actions"} or not isinstance(document["actions"], list):
        raise PlanError('the journaled plan is not {"v": ..., "actions": [...]}')
    if document["v"] != PLAN_VERSION:
        raise PlanError(f"journaled plan version {document['v']!r} is unknown (this gateway reads version {PLAN_VERSION})")
    node = yaml.SequenceNode("tag:yaml.org,2002:seq", [_action_node(item) for item in document["actions"]])
    sink = _Messages()
    plan = compile_morph(node, "plan", sink, plugins, journaled=True)
    if plan is None:
        raise PlanError("; ".join(sink.messages) or "the journaled plan does not compile")
    return MorphPlan(plan.actions, canonical)
