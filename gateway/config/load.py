"""Load a YAML configuration file into a validated :class:`GatewayConfig`.

Theory of operation
-------------------
The file is parsed with ``yaml.compose()`` on PyYAML's ``SafeLoader``, which
stops before constructing Python objects and so keeps a position
(``start_mark``) on every node, and lets us see duplicate keys that
``safe_load`` would silently merge. Validation then walks that node tree
guided by a schema written as data: each section is a table of
:class:`_Field` entries mapping a key to a *checker*.

A checker is a small function ``(node, key_path, ctx) -> value`` that either
returns the converted value or records a :class:`ConfigError` in ``ctx`` and
returns :data:`INVALID`. The context belongs to one load call; there is no
module-level error list, so loads are independent and re-entrant. Checking
never stops at the first problem: every section is checked, every error is
collected, and the loader raises :class:`ConfigErrors` holding all of them,
sorted by line. Only a file with no errors becomes a :class:`GatewayConfig`.

Adding a section (``http``, ``log``...) means writing its dataclass in
:mod:`gateway.config.schema`, a field table and a checker built with
:func:`_section` (or a hand-written checker for unusual shapes, like
:func:`_check_spool` or :func:`_check_destination`), and one line in
:data:`_TOP_LEVEL`; a field's ``attr`` maps a key to a differently named
dataclass parameter (``min_free`` -> ``min_free_bytes``).

Route files (``route_files``) are YAML lists of routes, each composed and
checked with its own :class:`_Context`, so its errors name that file and its
lines, but sharing one :class:`_Shared` state with the configuration file:
one error list, and the cross-references that only make sense once every
file is read. Checkers record those (each destination named in a
``forward`` list, each route name) and :func:`_check_references` resolves
them at the end, so a route in ``routes/ct.yaml`` naming a misspelt
destination is reported in ``routes/ct.yaml`` with a suggestion, and a
route name reused across files points at its first definition. Errors are
sorted by file (the configuration file first) and then by line.

Paths in the file are relative to the file's own folder, so a configuration
tree can be moved as a whole; they come out absolute.
"""

from __future__ import annotations

import difflib
import glob
import math
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields as dataclass_fields, replace
from enum import Enum
from typing import Any, Final, TypeAlias

import yaml
from yaml.constructor import SafeConstructor

from gateway.config.durations import parse_duration, parse_size
from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.schema import (
    FOLDER_PATTERN_FIELDS,
    AcceptConfig,
    CircuitConfig,
    DicomDestination,
    FolderDestination,
    GatewayConfig,
    HttpConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    RotateConfig,
    ListenerConfig,
    AuditConfig,
    CertificateBinding,
    DestinationTLSConfig,
    ListenerAccessConfig,
    ListenerTLSConfig,
    SyslogConfig,
    TLS_PROFILES,
    USER_IDENTITY_POLICIES,
    UserIdentityConfig,
    RetryConfig,
    RouteConfig,
    SpoolConfig,
)

__all__ = ["load_config", "load_config_text", "MAX_CONFIG_BYTES"]

#: Refuse configuration files larger than this (a mistyped path such as
#: ``/dev/zero`` must not exhaust memory).
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024

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
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
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


# --------------------------------------------------------------------------
# Sections

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


# PS3.15 Annex B: the profiles gateway.tls implements.
_check_tls_profile: Final = _one_of(TLS_PROFILES)

_LISTENER_TLS_FIELDS: Final[Mapping[str, _Field]] = {
    "certificate": _Field(_check_path, required=True),
    "private_key": _Field(_check_path, required=True),
    "ca": _Field(_check_path),
    "require_client_certificate": _Field(_check_boolean),
    "profile": _Field(_check_tls_profile),
    "handshake_timeout": _Field(_duration(0, 300.0)),
    "crl": _Field(_check_path),
}

_check_listener_tls_fields: Final = _section(ListenerTLSConfig, _LISTENER_TLS_FIELDS)


def _check_listener_tls(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a listener's ``tls`` block; a required client certificate needs a ``ca``.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`ListenerTLSConfig`, or :data:`INVALID`.
    """
    tls = _check_listener_tls_fields(node, path, ctx)
    if tls is INVALID:
        return INVALID
    if tls.require_client_certificate and not tls.ca:
        return ctx.error(
            _value_node(node, "require_client_certificate"),
            _child(path, "require_client_certificate"),
            "needs 'ca': client certificates are checked against it",
        )
    if tls.crl and not tls.ca:
        return ctx.error(
            _value_node(node, "crl"),
            _child(path, "crl"),
            "needs 'ca': the CRLs are those of the CAs client certificates chain to",
        )
    return tls


def _check_network(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a source network in CIDR notation (``10.1.0.0/16``, ``::1``).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The normalised network text, or :data:`INVALID`.
    """
    import ipaddress

    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as error:
        return ctx.error(node, path, f"not a network in CIDR notation: {error}")


def _check_name_pattern(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a certificate subject or issuer pattern (:mod:`gateway.subject`).

    :param node: The value node (a string).
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The pattern as written, or :data:`INVALID`.
    """
    from gateway.subject import NamePattern, PatternError

    text = _check_string(node, path, ctx)
    if text is INVALID:
        return INVALID
    try:
        NamePattern.parse(text)
    except PatternError as error:
        return ctx.error(node, path, f"not a certificate name pattern: {error}")
    return text


def _check_certificate_map(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``certificates``: certificate subject patterns mapped to calling AE title patterns.

    Each entry is ``"SUBJECT": [AE, ...]`` (or one AE title), or
    ``"SUBJECT": {ae_titles: [AE, ...], issuer: "ISSUER"}`` to pin the CA.

    :param node: The value node (a mapping).
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of :class:`CertificateBinding`, or :data:`INVALID`.
    """
    entries = _mapping_entries(node, path, ctx)
    if entries is INVALID:
        return INVALID
    assert isinstance(entries, dict)
    check_titles = _list_of(_check_ae_pattern, non_empty=True, empty_message="list at least one calling AE title pattern")
    bindings = []
    ok = True
    for subject, (key_node, value_node) in entries.items():
        where = _child(path, subject)
        issuer: Any = ""
        if _check_name_pattern(key_node, where, ctx) is INVALID:
            ok = False
        if isinstance(value_node, yaml.ScalarNode) and value_node.tag == _STR:
            titles = _check_ae_pattern(value_node, where, ctx)
            titles = INVALID if titles is INVALID else (titles,)
        elif isinstance(value_node, yaml.MappingNode):
            fields = _mapping_entries(value_node, where, ctx)
            assert isinstance(fields, dict)
            titles = INVALID
            for key, (inner_key, _inner) in fields.items():
                if key not in ("ae_titles", "issuer"):
                    ctx.error(inner_key, _child(where, key), "unknown key; expected 'ae_titles' or 'issuer'")
                    ok = False
            if "ae_titles" in fields:
                titles_node = fields["ae_titles"][1]
                if isinstance(titles_node, yaml.ScalarNode) and titles_node.tag == _STR:
                    titles = _check_ae_pattern(titles_node, _child(where, "ae_titles"), ctx)
                    titles = INVALID if titles is INVALID else (titles,)
                else:
                    titles = check_titles(titles_node, _child(where, "ae_titles"), ctx)
            else:
                ctx.error(value_node, where, "missing 'ae_titles': the calling AE titles this certificate may use")
            if "issuer" in fields:
                issuer = _check_name_pattern(fields["issuer"][1], _child(where, "issuer"), ctx)
                ok = ok and issuer is not INVALID
        else:
            titles = check_titles(value_node, where, ctx)
        if titles is INVALID or issuer is INVALID:
            ok = False
            continue
        bindings.append(CertificateBinding(subject, titles, issuer))
    return tuple(bindings) if ok else INVALID


_ACCESS_FIELDS: Final[Mapping[str, _Field]] = {
    "calling_ae_titles": _Field(_list_of(_check_ae_pattern, non_empty=True)),
    "networks": _Field(_list_of(_check_network, non_empty=True)),
    "certificates": _Field(_check_certificate_map),
}


def _check_verifiers(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``verifiers``: identity types (``kerberos``, ``saml``, ``jwt`` or 3-5) mapped to plugin names.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of ``(type, plugin name)``, or :data:`INVALID`.
    """
    names = {"kerberos": 3, "saml": 4, "jwt": 5, "3": 3, "4": 4, "5": 5}
    entries = _mapping_entries(node, path, ctx)
    if entries is INVALID:
        return INVALID
    assert isinstance(entries, dict)
    pairs = []
    ok = True
    for key, (key_node, value_node) in entries.items():
        kind = names.get(key.lower())
        plugin = _check_string(value_node, _child(path, key), ctx)
        available = ctx.shared.plugins.identity if ctx.shared.plugins is not None else None
        if kind is None:
            ctx.error(key_node, _child(path, key), "must be kerberos, saml or jwt (user identity types 3 to 5, PS3.7 D.3.3.7)")
            ok = False
        elif plugin is INVALID:
            ok = False
        elif available is not None and plugin not in available:
            known = ", ".join(sorted(available)) or "none is installed"
            ctx.error(value_node, _child(path, key), f"no user identity verifier plugin named {plugin!r} ({known})")
            ok = False
        else:
            pairs.append((kind, plugin))
    return tuple(pairs) if ok else INVALID


_USER_IDENTITY_FIELDS: Final[Mapping[str, _Field]] = {
    "policy": _Field(_one_of(USER_IDENTITY_POLICIES)),
    "users_file": _Field(_check_path),
    "verifiers": _Field(_check_verifiers),
}

_LISTENER_FIELDS: Final[Mapping[str, _Field]] = {
    "host": _Field(_check_string, required=True),
    # Port 0 asks the system for any free port, which tests rely on.
    "port": _Field(_integer(0, 65535), required=True),
    "name": _Field(_check_string),
    "tls": _Field(_check_listener_tls),
    "access": _Field(_section(ListenerAccessConfig, _ACCESS_FIELDS)),
    "user_identity": _Field(_section(UserIdentityConfig, _USER_IDENTITY_FIELDS)),
}

_check_listener_fields: Final = _section(ListenerConfig, _LISTENER_FIELDS)


def _check_listener_item(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept one ``listen`` entry; certificate rules need TLS, passcodes need a users file.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`ListenerConfig`, or :data:`INVALID`.
    """
    listener = _check_listener_fields(node, path, ctx)
    if listener is INVALID:
        return INVALID
    ok = True
    if listener.access.certificates and listener.tls is None:
        ok = False
        ctx.error(
            _value_node(_value_node(node, "access") or node, "certificates"),
            _child(_child(path, "access"), "certificates"),
            "certificate rules need a TLS listener (add 'tls')",
        )
    identity = listener.user_identity
    if identity.policy != "off" and not identity.users_file and not identity.verifiers:
        ok = False
        ctx.error(
            _value_node(node, "user_identity"),
            _child(path, "user_identity"),
            "a user identity policy needs 'users_file' or 'verifiers' to check identities against",
        )
    return listener if ok else INVALID


def _check_listeners(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept the ``listen`` list and check listeners against each other.

    Listener names label logs and metrics and identify a listener across a
    reload, so they must be unique; two listeners on one fixed address would
    fail at bind time, so that is refused here, with a line number.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of :class:`ListenerConfig`, or :data:`INVALID`.
    """
    listeners = _list_of(
        _check_listener_item,
        non_empty=True,
        empty_message="at least one listener is required",
    )(node, path, ctx)
    if listeners is INVALID:
        return INVALID
    assert isinstance(node, yaml.SequenceNode)
    names: dict[str, int] = {}
    addresses: dict[tuple[str, int], int] = {}
    ok = True
    for index, (listener, item_node) in enumerate(zip(listeners, node.value)):
        if listener.name in names:
            ok = False
            ctx.error(
                item_node,
                _child(_item(path, index), "name"),
                f"duplicate listener name {listener.name!r} "
                f"(also {_item(path, names[listener.name])})",
            )
        names.setdefault(listener.name, index)
        address = (listener.host, listener.port)
        if listener.port != 0 and address in addresses:
            ok = False
            ctx.error(
                item_node,
                _item(path, index),
                f"{listener.host}:{listener.port} is already used by "
                f"{_item(path, addresses[address])}",
            )
        addresses.setdefault(address, index)
    return listeners if ok else INVALID


_ACCEPT_FIELDS: Final[Mapping[str, _Field]] = {
    "calling_ae_titles": _Field(
        _list_of(
            _check_ae_pattern,
            non_empty=True,
            empty_message="must list at least one pattern; use ['*'] to accept any",
        )
    ),
    "unknown_sop_classes": _Field(_check_boolean),
}

# The longest timer we accept: a day. Anything longer is a typo (ms vs s).
_MAX_TIMER_SECONDS: Final = 86400.0

_LIMITS_FIELDS: Final[Mapping[str, _Field]] = {
    "max_associations": _Field(_integer(minimum=1)),
    # Our Maximum Length Received (PS3.8 D.1): 4 KiB is a floor below which
    # fragmentation overhead dominates, 16 MiB a ceiling on buffering.
    "max_pdu_length": _Field(_integer(4096, 16777216)),
    "acse_timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    "dimse_timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    "network_timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    "max_instance_size": _Field(_size(minimum=1)),
}

_SPOOL_FIELDS: Final[Mapping[str, _Field]] = {
    "path": _Field(_check_path, required=True),
    # 0 turns the free-space floor off (not advised; ENOSPC still gives 0xA700).
    "min_free": _Field(_size(minimum=0), attr="min_free_bytes"),
    "resume_margin": _Field(_size(minimum=0), attr="resume_margin_bytes"),
    "clean_interval": _Field(_duration(0, 86400)),
}

_check_spool_mapping: Final = _section(SpoolConfig, _SPOOL_FIELDS)


def _check_spool(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``spool`` as a path string or as a ``{path: ...}`` mapping.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`SpoolConfig`, or :data:`INVALID`.
    """
    if isinstance(node, yaml.MappingNode):
        return _check_spool_mapping(node, path, ctx)
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        spool_path = _check_path(node, path, ctx)
        return INVALID if spool_path is INVALID else SpoolConfig(path=spool_path)
    return _expected(ctx, node, path, "a string (a path) or a mapping")


# --------------------------------------------------------------------------
# Destinations

#: Destination names label metrics and are CLI arguments, so they are kept
#: to characters that need no quoting anywhere. The first character may not
#: be '.' or '-', so a name is never "..", a hidden file, or an option.
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

# The longest retry age and retention we accept: ten years. Longer is a typo.
_MAX_AGE_SECONDS: Final = 3650 * 86400.0

_RETRY_FIELDS: Final[Mapping[str, _Field]] = {
    "initial_delay": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    "max_delay": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    "multiplier": _Field(_number(minimum=1)),
    "jitter": _Field(_number(0, 1)),
    "max_attempts": _Field(_integer(minimum=1)),
    "max_age": _Field(_duration(0, _MAX_AGE_SECONDS)),
    "unknown_status_attempts": _Field(_integer(minimum=1)),
}

_check_retry_fields: Final = _section(RetryConfig, _RETRY_FIELDS)


def _check_retry(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a ``retry`` section; the first delay may not exceed the largest.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`RetryConfig`, or :data:`INVALID`.
    """
    retry = _check_retry_fields(node, path, ctx)
    if retry is INVALID:
        return INVALID
    assert isinstance(retry, RetryConfig)
    if retry.initial_delay > retry.max_delay:
        # Point at whichever of the two the file gives (defaults fill the other).
        where, key = _value_node(node, "initial_delay"), "initial_delay"
        if where is None:
            where, key = _value_node(node, "max_delay"), "max_delay"
        return ctx.error(
            where,
            _child(path, key),
            f"initial_delay ({retry.initial_delay:g}s) must not exceed "
            f"max_delay ({retry.max_delay:g}s)",
        )
    return retry


_CIRCUIT_FIELDS: Final[Mapping[str, _Field]] = {
    "failures": _Field(_integer(minimum=1)),
}

_TIMEOUT_FIELDS: Final[Mapping[str, _Field]] = {
    "connect": _Field(_duration(0, _MAX_TIMER_SECONDS), attr="connect_timeout"),
    # The ARTIM timer of a requestor (PS3.8 9.1.5).
    "acse": _Field(_duration(0, _MAX_TIMER_SECONDS), attr="acse_timeout"),
    "dimse": _Field(_duration(0, _MAX_TIMER_SECONDS), attr="dimse_timeout"),
}


def _check_timeouts(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a DICOM destination's ``timeouts`` section.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: ``{parameter: seconds}`` for the keys given, or :data:`INVALID`.
    """
    values = _check_fields(node, path, ctx, _TIMEOUT_FIELDS, null_is_empty=True)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    return _by_attr(values, _TIMEOUT_FIELDS)


# The keys that make a destination one kind or the other.
_DICOM_KIND_KEYS: Final = ("ae_title", "host", "port")
_FOLDER_KIND_KEY: Final = "folder"

_DICOM_FIELDS: Final[Mapping[str, _Field]] = {
    "ae_title": _Field(_check_ae_title, required=True),
    "host": _Field(_check_string, required=True),
    "port": _Field(_integer(1, 65535), required=True),
    "calling_ae_title": _Field(_check_ae_title),
    "max_associations": _Field(_integer(1, 64)),
    "batch_size": _Field(_integer(1, 10000)),
    "idle_release": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    # As for the listeners (PS3.8 D.1).
    "max_pdu_length": _Field(_integer(4096, 16777216)),
    "timeouts": _Field(_check_timeouts),
    "retry": _Field(_check_retry),
    "circuit": _Field(_section(CircuitConfig, _CIRCUIT_FIELDS)),
    # TLS to the destination (PS3.15 Annex B); no plain-TCP fallback.
    "tls": _Field(
        _section(
            DestinationTLSConfig,
            {
                "ca": _Field(_check_path, required=True),
                "server_name": _Field(_check_string),
                "certificate": _Field(_check_path),
                "private_key": _Field(_check_path),
                "profile": _Field(_check_tls_profile),
            },
        )
    ),
}


def _check_pattern(node: yaml.Node, path: str, ctx: _Context) -> str | _Invalid:
    """Accept a folder destination's file-name pattern.

    The pattern is a relative path of literal text and ``{Field}`` references
    to :data:`FOLDER_PATTERN_FIELDS` (``{{`` and ``}}`` are literal braces).
    It may not be absolute, climb with ``..``, or end in a folder, so the
    files it names stay inside the destination folder whatever the values;
    the values themselves are validated by the folder writer.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The pattern, or :data:`INVALID`.
    """
    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    assert isinstance(value, str)
    problems: list[str] = []
    if "\x00" in value:
        problems.append("a pattern must not contain a NUL character")
    # "/x", "\\x", "C:x" and "~/x" all leave the folder.
    if value.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", value):
        problems.append(f"the pattern {value!r} must be a relative path, not an absolute one")
    # Both separators count: the folder may be on a Windows share.
    components = re.split(r"[/\\]", value)
    if ".." in components:
        problems.append(f"the pattern {value!r} must not contain '..' components")
    if components[-1] == "":
        problems.append(f"the pattern {value!r} must end with a file name, not a '/'")
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as error:
        problems.append(
            f"invalid pattern {value!r}: {error}; write literal braces as {{{{ and }}}}"
        )
        parsed = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FOLDER_PATTERN_FIELDS:
            # Two suggestions: "StudyUID" is as close to StudyDate as to
            # StudyInstanceUID.
            close = difflib.get_close_matches(name, FOLDER_PATTERN_FIELDS, n=2, cutoff=0.6)
            hint = (
                "did you mean " + " or ".join(f"{{{field}}}" for field in close) + "?"
                if close
                else "use one of " + ", ".join(f"{{{field}}}" for field in FOLDER_PATTERN_FIELDS)
            )
            shown = name.encode("unicode_escape").decode("ascii")
            problems.append(f"unknown field {{{shown}}} in the pattern; {hint}")
        elif spec or conversion:
            problems.append(f"{{{name}}}: format specifications and conversions are not supported")
    for problem in problems:
        ctx.error(node, path, problem)
    return INVALID if problems else value


_FOLDER_FIELDS: Final[Mapping[str, _Field]] = {
    _FOLDER_KIND_KEY: _Field(_check_path, required=True, attr="path"),
    "pattern": _Field(_check_pattern),
    "retry": _Field(_check_retry),
    "circuit": _Field(_section(CircuitConfig, _CIRCUIT_FIELDS)),
}

# Keys of one kind found in a destination of the other kind get a message
# that says so, rather than "unknown key".
_ONLY_DICOM: Final[Mapping[str, str]] = {
    key: f"{key!r} applies only to DICOM destinations (ae_title, host, port), "
    "and this one is a folder destination"
    for key in _DICOM_FIELDS
    if key not in _FOLDER_FIELDS
}
_ONLY_FOLDER: Final[Mapping[str, str]] = {
    key: f"{key!r} applies only to folder destinations, "
    "and this one is a DICOM destination (it has ae_title, host, port)"
    for key in _FOLDER_FIELDS
    if key not in _DICOM_FIELDS
}


def _check_destination(
    name: str, key_node: yaml.Node, node: yaml.Node, path: str, ctx: _Context
) -> Any:
    """Accept one destination, of whichever kind its keys say.

    A destination with ``folder:`` is a folder; one with ``ae_title``,
    ``host`` and ``port`` is a DICOM AE. Both at once, or neither, is an
    error naming the destination (at its name's line).

    :param name: The destination's name.
    :param key_node: The name's node.
    :param node: The destination's mapping node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`DicomDestination` (whose ``calling_ae_title`` is
        ``""`` when not given; the caller fills it in), a
        :class:`FolderDestination`, or :data:`INVALID`.
    """
    if not isinstance(node, yaml.MappingNode):
        return _expected(ctx, node, path, "a mapping")
    keys = {key.value for key, _value in node.value if isinstance(key, yaml.ScalarNode)}
    dicom_keys = [key for key in _DICOM_KIND_KEYS if key in keys]
    if _FOLDER_KIND_KEY in keys and dicom_keys:
        return ctx.error(
            key_node,
            path,
            f"destination {name!r} mixes a folder destination (folder) with DICOM keys "
            f"({', '.join(dicom_keys)}); give either folder: or ae_title, host and port",
        )
    if _FOLDER_KIND_KEY in keys:
        values = _check_fields(node, path, ctx, _FOLDER_FIELDS, foreign=_ONLY_DICOM)
        if values is INVALID:
            return INVALID
        assert isinstance(values, dict)
        return FolderDestination(name=name, **_by_attr(values, _FOLDER_FIELDS))
    if not dicom_keys:
        return ctx.error(
            key_node,
            path,
            f"destination {name!r} is neither a folder (folder:) nor a DICOM AE "
            "(ae_title, host and port); give one of them",
        )
    values = _check_fields(node, path, ctx, _DICOM_FIELDS, foreign=_ONLY_FOLDER)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    timeouts = values.pop("timeouts", {})
    values.setdefault("calling_ae_title", "")
    return DicomDestination(name=name, **_by_attr(values, _DICOM_FIELDS), **timeouts)


def _check_destinations(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept the ``destinations`` mapping of names to destinations.

    The names are recorded for the routes' references even when a
    destination is invalid, so one mistake is not reported again at every
    route that names it.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of destinations in file order, or :data:`INVALID`.
    """
    if _is_null(node):
        return ()
    entries = _mapping_entries(node, path, ctx)
    if entries is INVALID:
        ctx.shared.destination_names = None
        return INVALID
    assert isinstance(entries, dict)
    ctx.shared.destination_names = frozenset(entries)
    destinations: list[Any] = []
    for name, (key_node, value_node) in entries.items():
        dest_path = _child(path, name)
        if not _NAME_PATTERN.fullmatch(name):
            ctx.error(
                key_node,
                dest_path,
                f"invalid destination name {name!r}: use 1 to 64 letters, digits, "
                "'_', '.' or '-', not starting with '.' or '-' (names label metrics "
                "and are command arguments)",
            )
            destinations.append(INVALID)
            continue
        destinations.append(_check_destination(name, key_node, value_node, dest_path, ctx))
    if any(destination is INVALID for destination in destinations):
        return INVALID
    return tuple(destinations)


# --------------------------------------------------------------------------
# Routes

# Route keys that the routing-rules issue implements. Until then they are
# errors: a gateway that silently ignored "drop" or "match" would forward
# what the operator meant to hold back.
def _check_forward(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a route's ``forward`` list of destination names.

    Each name is recorded for :func:`_check_references`, which checks it
    against the configured destinations once every file is read.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of names, or :data:`INVALID`.
    """
    names = _list_of(
        _check_string,
        non_empty=True,
        empty_message="must name at least one destination",
    )(node, path, ctx)
    if names is INVALID:
        return INVALID
    assert isinstance(node, yaml.SequenceNode)
    first: dict[str, int] = {}
    ok = True
    for index, (name, item_node) in enumerate(zip(names, node.value)):
        item_path = _item(path, index)
        if name in first:
            ok = False
            ctx.error(
                item_node,
                item_path,
                f"destination {name!r} is already listed ({_item(path, first[name])})",
            )
            continue
        first[name] = index
        if "{" in name or "}" in name:
            # A template resolved per instance (issue 4): its fields must
            # parse now; _check_references checks it can name a destination.
            from gateway.template import Template

            try:
                Template.parse(name)
            except ValueError as e:
                ok = False
                ctx.error(item_node, item_path, str(e))
                continue
        ctx.shared.forward_refs.append(_NameRef(ctx, item_node, item_path, name))
    return names if ok else INVALID


def _check_match(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Compile a route's ``match`` condition (:func:`gateway.config.match.compile_match`).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context (the compiler reports errors through it).
    :returns: A predicate, or :data:`INVALID`.
    """
    from gateway.config.match import compile_match

    plugins = ctx.shared.plugins
    predicate = compile_match(node, path, ctx, plugins.match if plugins else {})
    return INVALID if predicate is None else predicate


def _check_morph(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Compile a route's ``morph`` actions (:func:`gateway.config.morph.compile_morph`).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context (the compiler reports errors through it).
    :returns: A morph plan, or :data:`INVALID`.
    """
    from gateway.config.morph import compile_morph

    plugins = ctx.shared.plugins
    plan = compile_morph(node, path, ctx, plugins.morph if plugins else {}, base_dir=ctx.base_dir)
    return INVALID if plan is None else plan


def _check_reject(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a route's ``reject`` status: a C-STORE failure status (PS3.4 B.2.3, PS3.7 C).

    Written as a YAML integer (``0xA700`` or ``42752``) or a hex string (``"A700"``).
    """
    from gateway.dimse.status import StatusCategory, category

    value: Any = None
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:int":
            value = ctx.constructor.construct_object(node)
        elif node.tag == _STR:
            text = node.value.strip().lower()
            text = text[2:] if text.startswith("0x") else text
            if re.fullmatch(r"[0-9a-f]{4}", text):
                value = int(text, 16)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 0xFFFF:
        return ctx.error(node, path, "must be a C-STORE status such as 0xA700 or 0xC000")
    if category(value) is not StatusCategory.FAILURE:
        return ctx.error(node, path, f"0x{value:04X} is not a failure status; reject needs one (e.g. 0xA700, 0xA900, 0xC000)")
    return value


_ROUTE_FIELDS: Final[Mapping[str, _Field]] = {
    "name": _Field(_check_string, required=True),
    "forward": _Field(_check_forward),
    "match": _Field(_check_match),
    "morph": _Field(_check_morph),
    "final": _Field(_check_boolean),
    "drop": _Field(_check_boolean),
    "reject": _Field(_check_reject),
}


def _check_route(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept one route: a ``name`` and a ``forward`` list.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`RouteConfig` whose ``origin`` is ``file:line``, or
        :data:`INVALID`.
    """
    values = _check_fields(node, path, ctx, _ROUTE_FIELDS)
    if isinstance(node, yaml.MappingNode) and all(
        _value_node(node, key) is None for key in ("forward", "drop", "reject")
    ):
        ctx.error(node, path, "a route needs 'forward' (a list of destinations), 'drop: true' or 'reject: STATUS'")
        values = INVALID
    name_node = _value_node(node, "name")
    if name_node is not None and isinstance(name_node, yaml.ScalarNode):
        if name_node.tag == _STR and name_node.value.strip():
            ctx.shared.route_names.append(
                _NameRef(ctx, name_node, _child(path, "name"), name_node.value)
            )
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    if values.get("drop") and values.get("reject") is not None:
        return ctx.error(node, path, "a route cannot both drop and reject; choose one")
    if (values.get("drop") or values.get("reject") is not None) and values.get("forward"):
        return ctx.error(_value_node(node, "forward"), _child(path, "forward"), "a route that drops or rejects forwards nothing; remove 'forward'")
    if values.get("morph") is not None and not values.get("forward"):
        return ctx.error(_value_node(node, "morph"), _child(path, "morph"), "a route that forwards nothing has nothing to morph")
    if not values.get("forward") and not values.get("drop") and values.get("reject") is None:
        return ctx.error(node, path, "a route that neither drops nor rejects needs a non-empty 'forward'")
    values.setdefault("forward", ())
    origin = f"{ctx.source_name}:{node.start_mark.line + 1}"
    return RouteConfig(origin=origin, **values)


def _check_routes(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a list of routes (null means none).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of :class:`RouteConfig`, or :data:`INVALID`.
    """
    if _is_null(node):
        return ()
    return _list_of(_check_route, non_empty=False)(node, path, ctx)


# Glob characters, as the glob module reads them.
_GLOB_MAGIC: Final = re.compile(r"[*?[]")


def _check_route_files(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``route_files`` and load the route files it names.

    Each entry is a path or glob pattern relative to the configuration
    file. A pattern matching nothing is fine (an empty ``routes/`` folder);
    a plain path naming no file is an error. Matched files are read in
    sorted order, each once, the configuration file itself excepted.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of the :class:`RouteConfig` of every file, or
        :data:`INVALID`.
    """
    if _is_null(node):
        return ()
    patterns = _list_of(_check_string, non_empty=False)(node, path, ctx)
    if patterns is INVALID:
        return INVALID
    assert isinstance(node, yaml.SequenceNode)
    routes: list[RouteConfig] = []
    ok = True
    for index, (pattern, item_node) in enumerate(zip(patterns, node.value)):
        item_path = _item(path, index)
        if "\x00" in pattern:
            ok = False
            ctx.error(item_node, item_path, "a path must not contain a NUL character")
            continue
        full = os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(pattern)))
        if _GLOB_MAGIC.search(pattern):
            # Folders matched by a pattern (routes/*) are skipped, not errors.
            matches = [m for m in sorted(glob.glob(full, recursive=True)) if not os.path.isdir(m)]
        elif not os.path.exists(full):
            ok = False
            ctx.error(item_node, item_path, f"route file {pattern!r} does not exist ({full})")
            continue
        elif os.path.isdir(full):
            ok = False
            ctx.error(
                item_node,
                item_path,
                f"{pattern!r} is a folder; use a pattern such as '{pattern}/*.yaml'",
            )
            continue
        else:
            matches = [full]
        for match in matches:
            match = os.path.abspath(match)
            if match == ctx.source_path or match in ctx.shared.route_files:
                continue
            ctx.shared.route_files.add(match)
            file_routes = _load_route_file(match, ctx)
            if file_routes is INVALID:
                ok = False
            else:
                routes.extend(file_routes)
    return tuple(routes) if ok else INVALID


def _load_route_file(file_path: str, ctx: _Context) -> Any:
    """Read one route file: a YAML list of routes (empty means none).

    Errors name the route file, as the operator would reach it from where
    the configuration file was named, and lines in it; key paths start at
    ``routes[i]`` for the file's *i*-th route.

    :param file_path: The file's absolute path.
    :param ctx: The configuration file's context.
    :returns: A tuple of :class:`RouteConfig`, or :data:`INVALID`.
    """
    shown = os.path.normpath(
        os.path.join(ctx.display_dir, os.path.relpath(file_path, ctx.base_dir))
    )
    file_ctx = _Context(
        shown,
        os.path.dirname(file_path),
        display_dir=os.path.dirname(shown),
        source_path=file_path,
        shared=ctx.shared,
    )
    text = _read_text(file_path, shown, "route file")
    if isinstance(text, ConfigError):
        file_ctx.errors.append(text)
        return INVALID
    errors_before = len(file_ctx.errors)
    root = _compose(text, file_ctx)
    if root is None:
        # An empty file (or one with every route commented out) is fine.
        return INVALID if len(file_ctx.errors) > errors_before else ()
    if not isinstance(root, yaml.SequenceNode):
        return file_ctx.error(
            root, "", f"a route file must hold a list of routes, got {_describe(root)}"
        )
    return _list_of(_check_route, non_empty=False)(root, "routes", file_ctx)


def _check_references(ctx: _Context) -> None:
    """Check what spans sections and files: route names, forwarded destinations.

    Route names are unique across the configuration file and every route
    file (the first definition wins, later ones are errors). Every name in
    a ``forward`` list must be a configured destination.

    :param ctx: The configuration file's context (its shared state holds
        what every file recorded).
    """
    shared = ctx.shared
    first: dict[str, str] = {}
    for route in shared.route_names:
        where = f"{route.ctx.source_name}:{route.node.start_mark.line + 1}"
        if route.name in first:
            route.ctx.error(
                route.node,
                route.key_path,
                f"duplicate route name {route.name!r} (first defined at {first[route.name]})",
            )
        else:
            first[route.name] = where
    names = shared.destination_names
    if names is None:
        return
    for ref in shared.forward_refs:
        if ref.name in names:
            continue
        if "{" in ref.name or "}" in ref.name:
            _check_forward_template(ref, names)
            continue
        close = difflib.get_close_matches(ref.name, sorted(names), n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        elif names:
            hint = "configured destinations: " + ", ".join(sorted(names))
        else:
            hint = "no destinations are configured"
        ref.ctx.error(ref.node, ref.key_path, f"unknown destination {ref.name!r}; {hint}")


def _check_forward_template(ref: _NameRef, names: frozenset[str]) -> None:
    """Refuse a templated ``forward`` entry that can never name a configured destination.

    Each field may render any text, so the template's shape (its literal
    text around the fields) must fit at least one destination name; which
    one is decided per instance, and a result naming none is a routing
    error counted and kept at run time (:mod:`gateway.route`).

    :param ref: The templated reference (it parsed).
    :param names: The configured destination names.
    """
    from gateway.template import Template

    template = Template.parse(ref.name)
    shape = re.compile("".join(re.escape(text) if kind == "text" else ".*" for kind, text in template.parts))
    if template.is_literal:
        literal = "".join(text for _, text in template.parts)
        if literal in names:
            return
    elif any(shape.fullmatch(name) for name in names):
        return
    listed = ", ".join(sorted(names)) if names else "none"
    ref.ctx.error(
        ref.node, ref.key_path,
        f"forward template {ref.name!r} can never name a configured destination (configured: {listed})",
    )


def _check_folders_outside_spool(
    root: yaml.Node, values: Mapping[str, Any], ctx: _Context
) -> None:
    """Refuse folder destinations inside the spool.

    On start the gateway walks the spool for files with no queue entry and
    re-routes them; files written there by a folder destination would be
    taken for received instances and sent again.

    :param root: The configuration file's root node, to find lines.
    :param values: The checked top-level values.
    :param ctx: The load context.
    """
    spool = values.get("spool")
    if not isinstance(spool, SpoolConfig):
        return
    for destination in values.get("destinations", ()):
        if not isinstance(destination, FolderDestination):
            continue
        if os.path.commonpath([destination.path, spool.path]) != spool.path:
            continue
        path = _child(_child("destinations", destination.name), _FOLDER_KIND_KEY)
        node = _value_node(_value_node(root, "destinations") or root, destination.name)
        ctx.error(
            _value_node(node, _FOLDER_KIND_KEY) if node is not None else None,
            path,
            f"the folder {destination.path} is inside the spool ({spool.path}); "
            "the spool's recovery would take its files for received instances",
        )


def _default_of(name: str) -> Any:
    """Read a :class:`GatewayConfig` field's default, to keep it in one place.

    :param name: The field's name.
    :returns: Its default value.
    """
    for spec in dataclass_fields(GatewayConfig):
        if spec.name == name:
            return spec.default
    raise KeyError(name)  # pragma: no cover - a programming error


# Sections holding one value of GatewayConfig: {window: 1h} and the like.
_check_duplicates: Final = _section(
    lambda window=_default_of("duplicate_window"): window,
    {"window": _Field(_duration(0, _MAX_AGE_SECONDS, zero_allowed=True))},
)
_check_retention: Final = _section(
    lambda keep_delivered=_default_of("keep_delivered"): keep_delivered,
    {"keep_delivered": _Field(_duration(0, _MAX_AGE_SECONDS, zero_allowed=True))},
)
# An empty path means the default, <spool>/queue.sqlite (GatewayConfig).
_check_queue: Final = _section(
    lambda path="": path, {"path": _Field(_check_path)}
)


def _check_log_format(node: yaml.Node, path: str, ctx: _Context) -> Any:
    value = _check_string(node, path, ctx)
    if value is not INVALID and value not in ("text", "json"):
        return ctx.error(node, path, f"must be 'text' or 'json', not {value!r}")
    return value


def _check_log_level(node: yaml.Node, path: str, ctx: _Context) -> Any:
    value = _check_string(node, path, ctx)
    if value is not INVALID and value not in ("debug", "info", "warn", "error"):
        return ctx.error(node, path, f"must be one of debug, info, warn, error, not {value!r}")
    return value


_ROTATE_FIELDS: Final[Mapping[str, _Field]] = {
    "size": _Field(_size(minimum=1024)),
    "keep": _Field(_integer(0, 1000)),
}

_LOG_FIELDS: Final[Mapping[str, _Field]] = {
    "format": _Field(_check_log_format),
    "file": _Field(_check_path),
    "level": _Field(_check_log_level),
    "rotate": _Field(_section(RotateConfig, _ROTATE_FIELDS)),
}

def _check_http_token(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``http.token``: long enough to resist guessing, printable ASCII without spaces.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The token, or :data:`INVALID`.
    """
    from gateway.apitokens import token_problem

    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    problem = token_problem(value)
    return value if problem is None else ctx.error(node, path, problem)


def _check_host_name(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a ``Host`` header name for ``http.allowed_hosts`` (no port, no scheme), lower-cased.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The name, or :data:`INVALID`.
    """
    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    name = value.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not re.fullmatch(r"[a-z0-9._:-]+", name):
        return ctx.error(node, path, f"expected a host name or IP address without port or scheme, got {value!r}")
    return name


_HTTP_FIELDS: Final[Mapping[str, _Field]] = {
    "enabled": _Field(_check_boolean),
    "host": _Field(_check_string),
    "port": _Field(_integer(0, 65535)),
    "token": _Field(_check_http_token),
    "token_file": _Field(_check_path),
    "allowed_hosts": _Field(_list_of(_check_host_name, non_empty=False)),
    "tls": _Field(_check_listener_tls),
}

_check_http_fields: Final = _section(HttpConfig, _HTTP_FIELDS)


def _check_http(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept the ``http`` section; read ``token_file`` now, so a bad line is named with its number.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: An :class:`HttpConfig`, or :data:`INVALID`.
    """
    from gateway.apitokens import read_token_file

    http = _check_http_fields(node, path, ctx)
    if http is INVALID:
        return INVALID
    if http.token and http.token_file:
        return ctx.error(
            _value_node(node, "token_file"), _child(path, "token_file"), "give 'token' or 'token_file', not both"
        )
    if not http.token_file:
        return http
    tokens, problems = read_token_file(http.token_file)
    for problem in problems:
        # The token file's own line when there is one, else the key's line here.
        if problem.line is not None:
            ctx.errors.append(ConfigError(http.token_file, problem.line, _child(path, "token_file"), problem.message))
        else:
            ctx.error(_value_node(node, "token_file"), _child(path, "token_file"), f"{http.token_file}: {problem.message}")
    return INVALID if problems else replace(http, tokens=tokens)

_METRICS_FIELDS: Final[Mapping[str, _Field]] = {
    "calling_ae_titles": _Field(_list_of(_check_string, non_empty=False)),
}

_check_plugins: Final = _section(
    lambda folders=(): folders, {"folders": _Field(_list_of(_check_path, non_empty=False))}
)

_SYSLOG_FIELDS: Final[Mapping[str, _Field]] = {
    "host": _Field(_check_string, required=True),
    "port": _Field(_integer(1, 65535)),
    "ca": _Field(_check_path, required=True),
    "server_name": _Field(_check_string),
    "certificate": _Field(_check_path),
    "private_key": _Field(_check_path),
}

_AUDIT_FIELDS: Final[Mapping[str, _Field]] = {
    "file": _Field(_check_path),
    "rotate": _Field(_section(RotateConfig, _ROTATE_FIELDS)),
    "syslog": _Field(_section(SyslogConfig, _SYSLOG_FIELDS)),
}


#: The top-level sections. A new section is one more line here.
_TOP_LEVEL: Final[Mapping[str, _Field]] = {
    "ae_title": _Field(_check_ae_title, required=True),
    "listen": _Field(_check_listeners, required=True),
    "accept": _Field(_section(AcceptConfig, _ACCEPT_FIELDS), default=AcceptConfig),
    "limits": _Field(_section(LimitsConfig, _LIMITS_FIELDS), default=LimitsConfig),
    "spool": _Field(_check_spool, required=True),
    "queue": _Field(_check_queue, attr="queue_path"),
    "duplicates": _Field(_check_duplicates, attr="duplicate_window"),
    "retention": _Field(_check_retention, attr="keep_delivered"),
    "destinations": _Field(_check_destinations),
    "routes": _Field(_check_routes),
    # Read after "routes", so the configuration file's routes come first.
    "route_files": _Field(_check_route_files),
    "http": _Field(_check_http),
    "log": _Field(_section(LogConfig, _LOG_FIELDS)),
    "metrics": _Field(_section(MetricsConfig, _METRICS_FIELDS)),
    "plugins": _Field(_check_plugins, attr="plugin_folders"),
    "audit": _Field(_section(AuditConfig, _AUDIT_FIELDS)),
}


# --------------------------------------------------------------------------
# Entry points


def load_config(path: str) -> GatewayConfig:
    """Read, parse and validate a configuration file and its route files.

    :param path: The file's path; errors name it as given, and name route
        files relative to the same folder.
    :returns: The validated configuration, with ``source`` set to the
        file's absolute path and relative paths resolved against its folder.
    :raises ConfigErrors: If the file cannot be read, is not valid UTF-8 or
        YAML, or fails validation; it holds every problem found, in every
        file.
    """
    text = _read_text(path, path, "configuration file")
    if isinstance(text, ConfigError):
        raise ConfigErrors([text])
    absolute = os.path.abspath(path)
    return _load(
        text,
        path,
        os.path.dirname(absolute),
        absolute,
        display_dir=os.path.dirname(path),
        source_path=absolute,
    )


def load_config_text(text: str, source_name: str, base_dir: str) -> GatewayConfig:
    """Parse and validate configuration text (for tests and ``check`` tools).

    :param text: The YAML text.
    :param source_name: The name errors use for the text, and the
        resulting configuration's ``source``.
    :param base_dir: The folder relative paths are resolved against; route
        files are named by their absolute paths in errors.
    :returns: The validated configuration.
    :raises ConfigErrors: If the text is not valid YAML or fails validation.
    """
    base = os.path.abspath(base_dir)
    return _load(text, source_name, base, source_name, display_dir=base, source_path="")


def _read_text(path: str, shown: str, what: str) -> str | ConfigError:
    """Read a YAML file as text, within :data:`MAX_CONFIG_BYTES`.

    :param path: The file's path.
    :param shown: The file's name in errors.
    :param what: ``"configuration file"`` or ``"route file"``, for messages.
    :returns: The text, or the one error that stops it being read.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        reason = error.strerror or str(error)
        return ConfigError(shown, None, "", f"cannot read the {what}: {reason}")
    if len(data) > MAX_CONFIG_BYTES:
        return ConfigError(shown, None, "", f"the {what} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        # utf-8-sig drops a byte-order mark some editors write.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return ConfigError(
            shown, line, "", f"the file is not valid UTF-8 (byte 0x{data[error.start]:02x})"
        )


def _load(
    text: str,
    source_name: str,
    base_dir: str,
    source: str,
    *,
    display_dir: str,
    source_path: str,
) -> GatewayConfig:
    """Compose the YAML text and validate the tree, route files included.

    :param text: The YAML text.
    :param source_name: The file name for error messages.
    :param base_dir: The absolute folder for relative paths.
    :param source: The value of :attr:`GatewayConfig.source`.
    :param display_dir: The folder route file names are shown relative to.
    :param source_path: The file's absolute path (``""`` for text), which
        a route file pattern never matches.
    :returns: The validated configuration.
    :raises ConfigErrors: With every problem found.
    """
    ctx = _Context(source_name, base_dir, display_dir=display_dir, source_path=source_path)
    root = _compose(text, ctx)
    if root is None:
        if not ctx.errors:
            ctx.errors.append(
                ConfigError(
                    source_name,
                    None,
                    "",
                    "the file is empty; expected a mapping with the keys "
                    + ", ".join(key for key, spec in _TOP_LEVEL.items() if spec.required),
                )
            )
        raise ConfigErrors(ctx.errors)
    if not isinstance(root, yaml.MappingNode):
        ctx.error(root, "", f"expected a mapping at the top level, got {_describe(root)}")
        raise ConfigErrors(ctx.errors)
    _discover_plugins(root, ctx)
    values = _check_fields(root, "", ctx, _TOP_LEVEL)
    _check_references(ctx)
    if values is not INVALID:
        assert isinstance(values, dict)
        _check_folders_outside_spool(root, values, ctx)
    if ctx.errors or values is INVALID:
        # The configuration file first, then route files in the order they
        # were read; by line within a file (the sort is stable).
        order = {name: index for index, name in reversed(list(enumerate(ctx.shared.files)))}
        raise ConfigErrors(
            sorted(ctx.errors, key=lambda error: (order.get(error.file, 0), error.line or 0))
        )
    assert isinstance(values, dict)
    config = _assemble(source, values)
    plugins = ctx.shared.plugins
    return replace(config, morph_plugins=dict(plugins.morph)) if plugins else config


def _plugin_folders(root: yaml.MappingNode, ctx: _Context) -> tuple[str, ...]:
    """The plugin folders: ``plugins.folders``, or ``../plugins`` beside the configuration file."""
    node = _value_node(root, "plugins")
    if node is None:
        default = os.path.normpath(os.path.join(ctx.base_dir, "..", "plugins"))
        return (default,) if os.path.isdir(default) else ()
    # Read the folders with a scratch context: errors in the section are
    # reported once, by the regular check of the "plugins" key.
    scratch = _Context(ctx.source_name, ctx.base_dir)
    folders = _check_plugins(node, "plugins", scratch)
    return tuple(folders) if isinstance(folders, tuple) else ()


def _discover_plugins(root: yaml.MappingNode, ctx: _Context) -> None:
    """Load drop-in plugins before any route is compiled; a plugin that fails is a configuration error."""
    from gateway.plugins import discover

    folders = _plugin_folders(root, ctx)
    ctx.shared.plugins = discover(list(folders))
    node = _value_node(root, "plugins")
    for message in ctx.shared.plugins.errors:
        ctx.error(node, "plugins", message)


def _assemble(source: str, values: Mapping[str, Any]) -> GatewayConfig:
    """Build the configuration from the checked top-level values.

    :param source: The value of :attr:`GatewayConfig.source`.
    :param values: ``{key: value}`` for the top-level keys, all valid.
    :returns: The configuration, with the routes of route files after those
        of the configuration file, and each DICOM destination's calling AE
        title defaulted to the gateway's own.
    """
    arguments = _by_attr(values, _TOP_LEVEL)
    file_routes = arguments.pop("route_files", ())
    arguments["routes"] = tuple(arguments.get("routes", ())) + tuple(file_routes)
    ae_title = arguments["ae_title"]
    arguments["destinations"] = tuple(
        replace(destination, calling_ae_title=ae_title)
        if isinstance(destination, DicomDestination) and not destination.calling_ae_title
        else destination
        for destination in arguments.get("destinations", ())
    )
    return GatewayConfig(source=source, **arguments)


def _compose(text: str, ctx: _Context) -> yaml.Node | None:
    """Build the YAML node tree, turning YAML errors into one ConfigError.

    :param text: The YAML text.
    :param ctx: The load context; a syntax error is recorded here.
    :returns: The root node, or ``None`` for an empty document or an error.
    """
    try:
        root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = None if mark is None else mark.line + 1
        ctx.errors.append(ConfigError(ctx.source_name, line, "", _yaml_error_message(error)))
        return None
    except yaml.reader.ReaderError as error:
        # Raised for characters YAML forbids (control characters); it has a
        # character position instead of a mark.
        line = text.count("\n", 0, error.position) + 1
        character = error.character
        shown = f"U+{character:04X}" if isinstance(character, int) else repr(character)
        ctx.errors.append(
            ConfigError(ctx.source_name, line, "", f"invalid YAML: {error.reason} ({shown})")
        )
        return None
    except yaml.YAMLError as error:  # pragma: no cover - other YAML errors carry marks
        ctx.errors.append(ConfigError(ctx.source_name, None, "", f"invalid YAML: {error}"))
        return None
    except RecursionError:
        # PyYAML's composer recurses once per nesting level.
        ctx.errors.append(
            ConfigError(ctx.source_name, None, "", "invalid YAML: nesting is too deep")
        )
        return None
    return root


def _yaml_error_message(error: yaml.MarkedYAMLError) -> str:
    """Word a YAML syntax error without PyYAML's multi-line excerpt.

    :param error: The error.
    :returns: One line: the problem, its context, and a hint for the most
        common surprise (an unquoted ``*`` glob read as a YAML alias).
    """
    parts = [part for part in (error.context, error.problem) if part]
    message = "invalid YAML: " + ", ".join(parts)
    if error.context_mark is not None and error.problem_mark is not None:
        if error.context_mark.line != error.problem_mark.line:
            message += f" (started on line {error.context_mark.line + 1})"
    if "alias" in message or "anchor" in message:
        message += "; values starting with '*' or '&' must be quoted, e.g. \"*\""
    return message

