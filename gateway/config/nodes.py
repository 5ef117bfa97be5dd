"""The node-checking toolkit of the configuration loader: contexts, field tables and checkers.

The file is composed with ``yaml.compose()`` (so every node keeps its line),
then walked by *checkers*: small functions ``(node, key_path, ctx) -> value``
that return the converted value or record a :class:`ConfigError` in the
:class:`_Context` and return :data:`INVALID`. A section is a table of
:class:`_Field` entries (a key, its checker, whether it is required, its
default) turned into a checker by :func:`_section`. This module holds the
context, the scalar and collection checkers and the field-table machinery;
the sections themselves are in :mod:`gateway.config.listeners`,
:mod:`gateway.config.destinations`, :mod:`gateway.config.routes` and
:mod:`gateway.config.sections`, and :mod:`gateway.config.load` puts them
together.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, TypeAlias

import yaml
from yaml.constructor import SafeConstructor

from gateway.config.durations import parse_duration, parse_size
from gateway.config.errors import ConfigError
from gateway.suggest import did_you_mean

# The tags PyYAML's resolver gives plain scalars (YAML 1.1 core schema).
_TAG_PREFIX: Final = "tag:yaml.org,2002:"
_STR: Final = _TAG_PREFIX + "str"
_INT: Final = _TAG_PREFIX + "int"
_FLOAT: Final = _TAG_PREFIX + "float"
_BOOL: Final = _TAG_PREFIX + "bool"
_NULL: Final = _TAG_PREFIX + "null"
_MERGE: Final = _TAG_PREFIX + "merge"

# How each tag is named in "expected ..., got ..." messages.
_TAG_NAMES: Final[dict[str, str]] = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number with a fraction",
    _BOOL: "a boolean",
    _NULL: "nothing (null)",
    _TAG_PREFIX + "timestamp": "a date",
    _TAG_PREFIX + "binary": "binary data",
}


class _Invalid(Enum):
    """The type of :data:`INVALID`."""

    INVALID = "INVALID"

#: What a checker returns after recording an error, so callers can tell
#: "invalid" apart from any legitimate value (``None`` included).
INVALID: Final = _Invalid.INVALID


@dataclass(frozen=True)
class _NameRef:
    """A name checked once every file is read: a forwarded destination, or a route name.

    :param ctx: The context of the file the name is in.
    :param node: The name's node, for the line.
    :param key_path: The name's key path.
    :param name: The name.
    """

    ctx: _Context
    node: yaml.Node
    key_path: str
    name: str


class _Shared:
    """What the configuration file and its route files share during one load.

    Cross-references (a route naming a destination, route names unique
    across files) can only be checked once every file is read, so the
    checkers record them here and :func:`_check_references` resolves them.
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        #: Files in the order they were read, for sorting errors by file.
        self.files: list[str] = []
        #: Absolute paths of the route files already read (a file matched
        #: by two patterns is read once).
        self.route_files: set[str] = set()
        #: The configured destination names; ``None`` when the
        #: ``destinations`` section is unreadable, so its names are unknown
        #: and references to them are not reported as unknown.
        self.destination_names: frozenset[str] | None = frozenset()
        self.forward_refs: list[_NameRef] = []
        self.route_names: list[_NameRef] = []
        #: The drop-in plugins (:mod:`gateway.plugins`), found before routes are compiled.
        self.plugins: Any = None


class _Context:
    """The state of one load of one file: where it is, and the errors found so far.

    :param source_name: The file name used in error messages.
    :param base_dir: The absolute folder relative paths are resolved against.
    :param display_dir: The folder other files' names are shown relative to
        (the folder of ``source_name`` as the operator wrote it).
    :param source_path: The file's absolute path, or ``""`` for text.
    :param shared: The state shared with the other files of the same load;
        a fresh one when not given.
    """

    def __init__(
        self,
        source_name: str,
        base_dir: str,
        *,
        display_dir: str = "",
        source_path: str = "",
        shared: _Shared | None = None,
    ) -> None:
        self.source_name = source_name
        self.base_dir = base_dir
        self.display_dir = display_dir
        self.source_path = source_path
        self.shared = _Shared() if shared is None else shared
        self.shared.files.append(source_name)
        # One list for every file of the load, so errors are all collected.
        self.errors: list[ConfigError] = self.shared.errors
        # Converts int/float/bool scalars exactly as safe_load would.
        self.constructor = SafeConstructor()

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> _Invalid:
        """Record an error at ``node``'s line.

        :param node: The node the error is about, or ``None`` for no line.
        :param key_path: The dotted key path of the value.
        :param message: What is wrong.
        :returns: :data:`INVALID`, so checkers can ``return ctx.error(...)``.
        """
        line = None if node is None else node.start_mark.line + 1
        self.errors.append(ConfigError(self.source_name, line, key_path, message))
        return INVALID

#: ``checker(node, key_path, ctx)`` returns a converted value or INVALID.
Checker: TypeAlias = Callable[[yaml.Node, str, _Context], Any]


@dataclass(frozen=True)
class _Field:
    """One key of a mapping section.

    :param check: Validates and converts the key's value.
    :param required: Whether the key must be present.
    :param default: Makes the value when an optional key is absent; when
        ``None``, the absent key is left out and the dataclass default applies.
    :param attr: The dataclass parameter the value goes to, when it is not
        named like the key (``min_free`` -> ``min_free_bytes``).
    """

    check: Checker
    required: bool = False
    default: Callable[[], Any] | None = None
    attr: str = ""


# --------------------------------------------------------------------------
# Key paths and node descriptions

def _child(path: str, key: str) -> str:
    """Extend a key path with a mapping key.

    :param path: The parent path, empty at the top level.
    :param key: The key.
    :returns: ``"parent.key"``, or ``"key"`` at the top level.
    """
    return f"{path}.{key}" if path else key


def _item(path: str, index: int) -> str:
    """Extend a key path with a list index.

    :param path: The list's path.
    :param index: The 0-based index.
    :returns: ``"path[index]"``.
    """
    return f"{path}[{index}]"


def _is_null(node: yaml.Node) -> bool:
    """Tell whether a node is a null scalar (``~``, ``null`` or nothing).

    :param node: The node.
    :returns: ``True`` for null.
    """
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _describe(node: yaml.Node) -> str:
    """Name what a node holds, for "expected X, got Y" messages.

    :param node: The node.
    :returns: A phrase such as ``"a list"`` or ``"a string ('abc')"``.
    """
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    name = _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")
    if node.tag == _NULL:
        return name
    shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return f"{name} ({shown!r})"


def _expected(ctx: _Context, node: yaml.Node, path: str, what: str) -> _Invalid:
    """Record a wrong-type error.

    A plain (unquoted) scalar that YAML read as a number, boolean or null
    where a string was wanted gets a hint to quote it: YAML 1.1 reads ``NO``
    as false and ``0755`` as an octal number.

    :param ctx: The load context.
    :param node: The offending node.
    :param path: Its key path.
    :param what: The expected kind, with article (``"a string"``).
    :returns: :data:`INVALID`.
    """
    message = f"expected {what}, got {_describe(node)}"
    if (
        "string" in what
        and isinstance(node, yaml.ScalarNode)
        and node.tag != _STR
        and node.style is None
        and node.value
    ):
        message += "; quote the value to make it a string"
    return ctx.error(node, path, message)


# --------------------------------------------------------------------------
# Scalar checkers

def _check_string(node: yaml.Node, path: str, ctx: _Context) -> str | _Invalid:
    """Accept a non-empty string.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The string, or :data:`INVALID`.
    """
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        return _expected(ctx, node, path, "a string")
    value: str = node.value
    if not value.strip():
        return ctx.error(node, path, "must not be empty")
    return value


def _integer(minimum: int | None = None, maximum: int | None = None) -> Checker:
    """Make a checker for an integer within bounds.

    :param minimum: The smallest accepted value, if any.
    :param maximum: The largest accepted value, if any.
    :returns: The checker.
    """

    def check(node: yaml.Node, path: str, ctx: _Context) -> int | _Invalid:
        # A YAML float (8.0) or boolean (true) is not an integer here.
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            return _expected(ctx, node, path, _range_phrase("an integer", minimum, maximum))
        value = _construct(node, path, ctx)
        if value is INVALID:
            return INVALID
        assert isinstance(value, int)
        if (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            return ctx.error(
                node, path, f"must be {_range_phrase('an integer', minimum, maximum)}, got {value}"
            )
        return value

    return check


def _range_phrase(what: str, minimum: float | None, maximum: float | None) -> str:
    """Describe a bounded kind of value.

    :param what: The kind, with article.
    :param minimum: The lower bound, if any.
    :param maximum: The upper bound, if any.
    :returns: e.g. ``"an integer between 4096 and 16777216"``.
    """
    if minimum is not None and maximum is not None:
        return f"{what} between {minimum} and {maximum}"
    if minimum is not None:
        return f"{what} of at least {minimum}"
    if maximum is not None:
        return f"{what} of at most {maximum}"
    return what


def _check_boolean(node: yaml.Node, path: str, ctx: _Context) -> bool | _Invalid:
    """Accept a YAML boolean (``true``/``false``, and YAML 1.1's ``yes``/``no``).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The boolean, or :data:`INVALID`.
    """
    if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
        return _expected(ctx, node, path, "a boolean (true or false)")
    value = _construct(node, path, ctx)
    assert value is INVALID or isinstance(value, bool)
    return value


def _construct(node: yaml.ScalarNode, path: str, ctx: _Context) -> object:
    """Convert an int, float, bool or str scalar as ``safe_load`` would.

    Plain scalars only get these tags when they look right, but an explicit
    tag (``!!int abc``) can carry any text, so conversion can still fail.

    :param node: A scalar node tagged int, float, bool or str.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The Python value, or :data:`INVALID` after recording an error.
    """
    converters: dict[str, Callable[[yaml.ScalarNode], object]] = {
        _INT: ctx.constructor.construct_yaml_int,
        _FLOAT: ctx.constructor.construct_yaml_float,
        _BOOL: ctx.constructor.construct_yaml_bool,
        _STR: ctx.constructor.construct_yaml_str,
    }
    try:
        return converters[node.tag](node)
    except (ValueError, KeyError):
        return ctx.error(node, path, f"{node.value!r} is not valid for its tag {node.tag}")


def _scalar_python_value(node: yaml.Node, path: str, ctx: _Context) -> object:
    """Convert a string, integer or float scalar to its Python value.

    :param node: The node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The value; :data:`INVALID` after a conversion error; ``None``
        for any other node (booleans included, so ``true`` never passes as
        a number).
    """
    if isinstance(node, yaml.ScalarNode) and node.tag in (_STR, _INT, _FLOAT):
        return _construct(node, path, ctx)
    return None


def _duration(
    minimum_exclusive: float, maximum: float, *, zero_allowed: bool = False
) -> Checker:
    """Make a checker for a duration, via :func:`parse_duration`.

    :param minimum_exclusive: Values must be greater than this.
    :param maximum: Values must be at most this many seconds.
    :param zero_allowed: Accept 0 as well (it means "off" for windows and
        retention periods).
    :returns: The checker; it yields float seconds.
    """

    def check(node: yaml.Node, path: str, ctx: _Context) -> float | _Invalid:
        value = _scalar_python_value(node, path, ctx)
        if value is INVALID:
            return INVALID
        if value is None:
            return _expected(ctx, node, path, "a duration such as '30s' or '5m'")
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            return ctx.error(node, path, str(error))
        if zero_allowed and seconds == 0:
            return seconds
        if not minimum_exclusive < seconds <= maximum:
            lower = (
                f"at least {minimum_exclusive:g}"
                if zero_allowed and minimum_exclusive == 0
                else f"more than {minimum_exclusive:g}"
            )
            return ctx.error(
                node,
                path,
                f"must be {lower} and at most {maximum:g} seconds, got {seconds:g}",
            )
        return seconds

    return check


def _number(minimum: float | None = None, maximum: float | None = None) -> Checker:
    """Make a checker for a finite number (integer or fraction) within bounds.

    :param minimum: The smallest accepted value, if any (inclusive).
    :param maximum: The largest accepted value, if any (inclusive).
    :returns: The checker; it yields a float.
    """

    def check(node: yaml.Node, path: str, ctx: _Context) -> float | _Invalid:
        # Booleans and quoted numbers are refused, as for integers.
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT):
            return _expected(ctx, node, path, _range_phrase("a number", minimum, maximum))
        value = _construct(node, path, ctx)
        if value is INVALID:
            return INVALID
        assert isinstance(value, (int, float))
        number = float(value)
        # YAML spells infinity and NaN .inf and .nan; neither is a setting.
        if math.isnan(number) or math.isinf(number):
            return ctx.error(node, path, f"must be a finite number, got {node.value}")
        if (minimum is not None and number < minimum) or (
            maximum is not None and number > maximum
        ):
            return ctx.error(
                node, path, f"must be {_range_phrase('a number', minimum, maximum)}, got {number:g}"
            )
        return number

    return check


def _size(minimum: int) -> Checker:
    """Make a checker for a size in bytes, via :func:`parse_size`.

    :param minimum: The smallest accepted size in bytes.
    :returns: The checker; it yields an int.
    """

    def check(node: yaml.Node, path: str, ctx: _Context) -> int | _Invalid:
        value = _scalar_python_value(node, path, ctx)
        if value is INVALID:
            return INVALID
        if value is None:
            return _expected(ctx, node, path, "a size such as '500MB' or '4GiB'")
        try:
            size = parse_size(value)
        except ValueError as error:
            return ctx.error(node, path, str(error))
        if size < minimum:
            return ctx.error(node, path, f"must be at least {minimum} bytes, got {size}")
        return size

    return check


def _check_path(node: yaml.Node, path: str, ctx: _Context) -> str | _Invalid:
    """Accept a filesystem path and make it absolute.

    Relative paths are resolved against the configuration file's folder, and
    ``~`` against the home directory; the result is normalised but symbolic
    links are left alone.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The absolute path, or :data:`INVALID`.
    """
    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    assert isinstance(value, str)
    if "\x00" in value:
        return ctx.error(node, path, "a path must not contain a NUL character")
    expanded = os.path.expanduser(value)
    return os.path.normpath(os.path.join(ctx.base_dir, expanded))


def _ae_problem(value: str) -> str | None:
    """Find what makes a string unusable as an AE title or AE pattern.

    PS3.5 Table 6.2-1 (VR AE): characters from the Default Character
    Repertoire without control characters and without backslash (the
    multi-value delimiter), and a value of only spaces is not allowed.

    :param value: The candidate.
    :returns: A message, or ``None`` when the value is acceptable.
    """
    for char in value:
        if not " " <= char <= "~" or char == "\\":
            return (
                f"must contain only printable ASCII characters other than "
                f"backslash (PS3.5 6.2, VR AE), found {char!r}"
            )
    if not value.strip(" "):
        return "must not be empty or only spaces (PS3.5 6.2, VR AE)"
    return None


def _check_ae_title(node: yaml.Node, path: str, ctx: _Context) -> str | _Invalid:
    """Accept an AE title: 1 to 16 characters (PS3.5 Table 6.2-1, VR AE).

    Leading and trailing spaces are not significant (same table), so they
    are removed from the result.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The stripped AE title, or :data:`INVALID`.
    """
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        return _expected(ctx, node, path, "a string")
    value: str = node.value
    problem = _ae_problem(value)
    if problem is None and len(value) > 16:
        problem = f"must be at most 16 characters (PS3.5 6.2, VR AE), got {len(value)}"
    if problem is not None:
        return ctx.error(node, path, problem)
    return value.strip(" ")


def _check_ae_pattern(node: yaml.Node, path: str, ctx: _Context) -> str | _Invalid:
    """Accept a glob pattern over AE titles (``*``, ``MODALITY_*``, ``CT?``).

    The characters allowed are those of an AE title (PS3.5 Table 6.2-1); the
    length is not limited, since ``[...]`` classes make patterns longer
    than the titles they match.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The stripped pattern, or :data:`INVALID`.
    """
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        return _expected(ctx, node, path, "a string")
    value: str = node.value
    problem = _ae_problem(value)
    if problem is not None:
        return ctx.error(node, path, problem)
    return value.strip(" ")


# --------------------------------------------------------------------------
# Collections

def _list_of(item: Checker, *, non_empty: bool, empty_message: str = "") -> Checker:
    """Make a checker for a list whose items all pass ``item``.

    :param item: The checker for each item.
    :param non_empty: Whether an empty list is an error.
    :param empty_message: The message for an empty list.
    :returns: The checker; it yields a tuple.
    """

    def check(node: yaml.Node, path: str, ctx: _Context) -> tuple[Any, ...] | _Invalid:
        if not isinstance(node, yaml.SequenceNode):
            return _expected(ctx, node, path, "a list")
        if non_empty and not node.value:
            return ctx.error(node, path, empty_message or "must not be empty")
        values = [item(child, _item(path, i), ctx) for i, child in enumerate(node.value)]
        if any(value is INVALID for value in values):
            return INVALID
        return tuple(values)

    return check


def _mapping_entries(
    node: yaml.Node, path: str, ctx: _Context
) -> dict[str, tuple[yaml.Node, yaml.Node]] | _Invalid:
    """Read a mapping node's entries, refusing duplicate and non-string keys.

    :param node: The node, which must be a mapping.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: ``{key: (key_node, value_node)}`` in file order, keeping the
        first of duplicated keys; or :data:`INVALID` if ``node`` is not a
        mapping. Bad keys are reported and left out.
    """
    if not isinstance(node, yaml.MappingNode):
        return _expected(ctx, node, path, "a mapping")
    entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            ctx.error(
                key_node, path, "YAML merge keys ('<<') are not supported; write the keys out"
            )
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
            ctx.error(key_node, path, f"keys must be strings, got {_describe(key_node)}")
            continue
        key: str = key_node.value
        if key in entries:
            first_line = entries[key][0].start_mark.line + 1
            ctx.error(
                key_node,
                _child(path, key),
                f"duplicate key {key!r} (first given on line {first_line})",
            )
            continue
        entries[key] = (key_node, value_node)
    return entries


def _check_fields(
    node: yaml.Node,
    path: str,
    ctx: _Context,
    fields: Mapping[str, _Field],
    *,
    null_is_empty: bool = False,
    foreign: Mapping[str, str] | None = None,
) -> dict[str, Any] | _Invalid:
    """Check a mapping against a field table.

    Reports unknown keys (with a "did you mean" suggestion), missing
    required keys (at the mapping's line), and whatever each field's checker
    finds. Every field is checked even after an error.

    :param node: The mapping node.
    :param path: Its key path.
    :param ctx: The load context.
    :param fields: The allowed keys and their checkers.
    :param null_is_empty: Treat a null node as an empty mapping (so
        ``limits:`` with every entry commented out means the defaults).
    :param foreign: Keys that are not allowed here but have a meaning
        elsewhere, with the message explaining why (a DICOM destination's
        key in a folder destination, a routing rule not supported yet).
    :returns: ``{key: value}`` for present keys and for absent keys with a
        default factory, or :data:`INVALID` if anything was wrong.
    """
    errors_before = len(ctx.errors)
    if null_is_empty and _is_null(node):
        entries: dict[str, tuple[yaml.Node, yaml.Node]] | _Invalid = {}
    else:
        entries = _mapping_entries(node, path, ctx)
    if entries is INVALID:
        return INVALID
    assert isinstance(entries, dict)
    for key, (key_node, _value_node) in entries.items():
        if key in fields:
            continue
        if foreign is not None and key in foreign:
            ctx.error(key_node, _child(path, key), foreign[key])
        else:
            ctx.error(key_node, _child(path, key), _unknown_key_message(key, fields))
    values: dict[str, Any] = {}
    for key, spec in fields.items():
        if key in entries:
            value = spec.check(entries[key][1], _child(path, key), ctx)
            if value is not INVALID:
                values[key] = value
        elif spec.required:
            ctx.error(node, _child(path, key), "required key is missing")
        elif spec.default is not None:
            values[key] = spec.default()
    # Any error here (bad keys included) makes the whole mapping invalid.
    if len(ctx.errors) > errors_before:
        return INVALID
    return values


def _unknown_key_message(key: str, fields: Mapping[str, _Field]) -> str:
    """Word the error for an unknown key, suggesting the nearest known one.

    :param key: The unknown key.
    :param fields: The known keys.
    :returns: The message.
    """
    hint = did_you_mean(key, fields, show=repr)
    if hint:
        return f"unknown key {key!r}; {hint}"
    return f"unknown key {key!r}; expected one of: {', '.join(fields)}"


def _by_attr(values: Mapping[str, Any], fields: Mapping[str, _Field]) -> dict[str, Any]:
    """Rename checked values from their keys to their dataclass parameters.

    :param values: ``{key: value}`` as :func:`_check_fields` returns it.
    :param fields: The field table, whose ``attr`` entries give the names.
    :returns: ``{parameter: value}``.
    """
    return {fields[key].attr or key: value for key, value in values.items()}


def _value_node(node: yaml.Node, key: str) -> yaml.Node | None:
    """Find the value node of a key in a mapping node, for error lines.

    :param node: The mapping node (anything else has no keys).
    :param key: The key.
    :returns: The first value node of that key, or ``None``.
    """
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found: yaml.Node = value_node
                return found
    return None


def _section(factory: Callable[..., Any], fields: Mapping[str, _Field]) -> Checker:
    """Make a checker that builds a dataclass from a mapping section.

    :param factory: The dataclass (or any callable taking the keys as
        keyword arguments).
    :param fields: The section's field table.
    :returns: The checker; a null node counts as an empty mapping.
    """

    def check(node: yaml.Node, path: str, ctx: _Context) -> Any:
        values = _check_fields(node, path, ctx, fields, null_is_empty=True)
        if values is INVALID:
            return INVALID
        assert isinstance(values, dict)
        return factory(**_by_attr(values, fields))

    return check


def _one_of(choices: tuple[str, ...]) -> Checker:
    """Make a checker for a string that must be one of ``choices``.

    :param choices: The allowed values.
    :returns: The checker.
    """

    def check(node: yaml.Node, path: str, ctx: _Context) -> Any:
        value = _check_string(node, path, ctx)
        if value is not INVALID and value not in choices:
            return ctx.error(node, path, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return check
