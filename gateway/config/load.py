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

Where things are: the node-checking toolkit (contexts, field tables, scalar
and collection checkers) is :mod:`gateway.config.nodes`; the sections are
:mod:`gateway.config.listeners`, :mod:`gateway.config.destinations`,
:mod:`gateway.config.routes` (with the rule compilers
:mod:`gateway.config.match` and :mod:`gateway.config.morph`) and
:mod:`gateway.config.sections`; this module reads the files, lists the
top-level sections (:data:`_TOP_LEVEL`) and assembles the result.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

import yaml

from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.schema import (
    AcceptConfig,
    DicomDestination,
    GatewayConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    AuditConfig,
    DrainConfig,
    RouteConfig,
)
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _by_attr,
    _check_ae_title,
    _check_fields,
    _check_string,
    _describe,
    _is_null,
    _item,
    _list_of,
    _section,
    _value_node,
)
from gateway.config.commitment import check_commitment, check_commitment_requesters
from gateway.config.dicomweb import check_dicomweb
from gateway.config.modalities import check_modalities
from gateway.config.console import check_console
from gateway.config.qr import check_qr_references, check_query, check_retrieve
from gateway.config.listeners import _ACCEPT_FIELDS, _LIMITS_FIELDS, _check_listeners
from gateway.config.destinations import _check_destinations, _check_folders_outside_spool
from gateway.config.routes import _check_references, _check_route, _check_routes
from gateway.config.sections import (
    _AUDIT_FIELDS,
    _DRAIN_FIELDS,
    _LOG_FIELDS,
    _METRICS_FIELDS,
    _check_cluster,
    _check_duplicates,
    _check_http,
    _check_node_name,
    _check_plugins,
    _check_queue,
    _check_retention,
    _check_spool,
)

__all__ = ["load_config", "load_config_text", "MAX_CONFIG_BYTES"]

#: Refuse configuration files larger than this (a mistyped path such as
#: ``/dev/zero`` must not exhaust memory).
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024

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

#: The top-level sections. A new section is one more line here.
_TOP_LEVEL: Final[Mapping[str, _Field]] = {
    "ae_title": _Field(_check_ae_title, required=True),
    "listen": _Field(_check_listeners, required=True),
    "accept": _Field(_section(AcceptConfig, _ACCEPT_FIELDS), default=AcceptConfig),
    "limits": _Field(_section(LimitsConfig, _LIMITS_FIELDS), default=LimitsConfig),
    "spool": _Field(_check_spool, required=True),
    "node": _Field(_check_node_name),
    "queue": _Field(_check_queue),
    "cluster": _Field(_check_cluster),
    "duplicates": _Field(_check_duplicates, attr="duplicate_window"),
    # Spread by _assemble into keep_delivered, retrieve_retention and remap_retention.
    "retention": _Field(_check_retention),
    "destinations": _Field(_check_destinations),
    "routes": _Field(_check_routes),
    # Read after "routes", so the configuration file's routes come first.
    "route_files": _Field(_check_route_files),
    "http": _Field(_check_http),
    "log": _Field(_section(LogConfig, _LOG_FIELDS)),
    "metrics": _Field(_section(MetricsConfig, _METRICS_FIELDS)),
    "plugins": _Field(_check_plugins, attr="plugin_folders"),
    "audit": _Field(_section(AuditConfig, _AUDIT_FIELDS)),
    "drain": _Field(_section(DrainConfig, _DRAIN_FIELDS)),
    # Issue 15: the AEs the gateway may call back, and its Storage Commitment SCP.
    "modalities": _Field(check_modalities),
    "commitment": _Field(check_commitment),
    # Issue 16: the Query/Retrieve SCP (sources are DICOM destinations; move destinations are modalities).
    "query": _Field(check_query),
    "retrieve": _Field(check_retrieve),
    # Issue 17: the STOW-RS inbound service.
    "dicomweb": _Field(check_dicomweb),
    # Issue 18: the operator console under /console of the HTTP service.
    "console": _Field(check_console),
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
        _check_shared_spool(root, values, ctx)
        check_commitment_requesters(root, values, ctx)
        check_qr_references(root, values, ctx)
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


def _check_shared_spool(root: yaml.MappingNode, values: Mapping[str, Any], ctx: _Context) -> None:
    """Refuse ``spool.shared: true`` with the SQLite queue (issue 14).

    Several nodes sharing a spool share its queue too, and SQLite's locks do
    not hold on a network filesystem (SQLite FAQ 5; "How To Corrupt An SQLite
    Database File" 2.1): the journal would be corrupted.

    :param root: The document's root mapping.
    :param values: The checked top-level values.
    :param ctx: The load context.
    """
    spool = values.get("spool")
    queue = values.get("queue")
    backend = "sqlite" if queue is None else queue.backend
    if spool is None or not spool.shared or backend != "sqlite":
        return
    spool_node = _value_node(root, "spool")
    shared_node = None if spool_node is None else _value_node(spool_node, "shared")
    ctx.error(
        shared_node,
        "spool.shared",
        "SQLite on a network filesystem is not safe: a shared spool needs queue.backend: postgresql",
    )


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
    arguments.update(arguments.pop("retention", {}))
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
