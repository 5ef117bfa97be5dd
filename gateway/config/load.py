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

Adding a section (``destinations``, ``routes``, ``http``, ``log``...) means
writing its dataclass in :mod:`gateway.config.schema`, a field table and a
checker built with :func:`_section` (or a hand-written checker for unusual
shapes, like :func:`_check_spool`), and one line in :data:`_TOP_LEVEL`.

Paths in the file are relative to the file's own folder, so a configuration
tree can be moved as a whole; they come out absolute.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, TypeAlias

import yaml
from yaml.constructor import SafeConstructor

from gateway.config.durations import parse_duration, parse_size
from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.schema import (
    AcceptConfig,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
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


class _Context:
    """The state of one load: where the file is, and the errors found so far.

    :param source_name: The file name used in error messages.
    :param base_dir: The absolute folder relative paths are resolved against.
    """

    def __init__(self, source_name: str, base_dir: str) -> None:
        self.source_name = source_name
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
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
    """

    check: Checker
    required: bool = False
    default: Callable[[], Any] | None = None


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


def _duration(minimum_exclusive: float, maximum: float) -> Checker:
    """Make a checker for a duration, via :func:`parse_duration`.

    :param minimum_exclusive: Values must be greater than this.
    :param maximum: Values must be at most this many seconds.
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
        if not minimum_exclusive < seconds <= maximum:
            return ctx.error(
                node,
                path,
                f"must be more than {minimum_exclusive:g} and at most {maximum:g} "
                f"seconds, got {seconds:g}",
            )
        return seconds

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
        if key not in fields:
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
        return factory(**values)

    return check


# --------------------------------------------------------------------------
# Sections

_LISTENER_FIELDS: Final[Mapping[str, _Field]] = {
    "host": _Field(_check_string, required=True),
    # Port 0 asks the system for any free port, which tests rely on.
    "port": _Field(_integer(0, 65535), required=True),
    "name": _Field(_check_string),
}

_check_listener_item: Final = _section(ListenerConfig, _LISTENER_FIELDS)


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


#: The top-level sections. A new section is one more line here.
_TOP_LEVEL: Final[Mapping[str, _Field]] = {
    "ae_title": _Field(_check_ae_title, required=True),
    "listen": _Field(_check_listeners, required=True),
    "accept": _Field(_section(AcceptConfig, _ACCEPT_FIELDS), default=AcceptConfig),
    "limits": _Field(_section(LimitsConfig, _LIMITS_FIELDS), default=LimitsConfig),
    "spool": _Field(_check_spool, required=True),
}


# --------------------------------------------------------------------------
# Entry points


def load_config(path: str) -> GatewayConfig:
    """Read, parse and validate a configuration file.

    :param path: The file's path; errors name it as given.
    :returns: The validated configuration, with ``source`` set to the
        file's absolute path and relative paths resolved against its folder.
    :raises ConfigErrors: If the file cannot be read, is not valid UTF-8 or
        YAML, or fails validation; it holds every problem found.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigErrors(
            [ConfigError(path, None, "", f"cannot read the configuration file: {reason}")]
        ) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigErrors(
            [
                ConfigError(
                    path,
                    None,
                    "",
                    f"the configuration file is larger than {MAX_CONFIG_BYTES} bytes",
                )
            ]
        )
    try:
        # utf-8-sig drops a byte-order mark some editors write.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigErrors(
            [
                ConfigError(
                    path,
                    line,
                    "",
                    f"the file is not valid UTF-8 (byte 0x{data[error.start]:02x})",
                )
            ]
        ) from None
    absolute = os.path.abspath(path)
    return _load(text, path, os.path.dirname(absolute), absolute)


def load_config_text(text: str, source_name: str, base_dir: str) -> GatewayConfig:
    """Parse and validate configuration text (for tests and ``check`` tools).

    :param text: The YAML text.
    :param source_name: The name errors use for the text, and the
        resulting configuration's ``source``.
    :param base_dir: The folder relative paths are resolved against.
    :returns: The validated configuration.
    :raises ConfigErrors: If the text is not valid YAML or fails validation.
    """
    return _load(text, source_name, os.path.abspath(base_dir), source_name)


def _load(text: str, source_name: str, base_dir: str, source: str) -> GatewayConfig:
    """Compose the YAML text and validate the tree.

    :param text: The YAML text.
    :param source_name: The file name for error messages.
    :param base_dir: The absolute folder for relative paths.
    :param source: The value of :attr:`GatewayConfig.source`.
    :returns: The validated configuration.
    :raises ConfigErrors: With every problem found.
    """
    ctx = _Context(source_name, base_dir)
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
    values = _check_fields(root, "", ctx, _TOP_LEVEL)
    if ctx.errors or values is INVALID:
        # Errors in document order; the sort is stable within a line.
        raise ConfigErrors(sorted(ctx.errors, key=lambda error: error.line or 0))
    assert isinstance(values, dict)
    return GatewayConfig(source=source, **values)


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

