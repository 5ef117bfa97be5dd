"""Configuration sections ``query`` and ``retrieve`` (top level and ``listen[i]``; issue 16).

The gateway as a Query/Retrieve SCP (PS3.4 Annex C) proxying to archives:

* ``query: {sources, mode, timeout, strict, max_results, query_morph,
  response_morph, allowed_ae_titles, relational}``: the C-FIND side. ``sources`` name
  DICOM destinations (in order of precedence); ``query_morph`` and
  ``response_morph`` are morph lists compiled exactly as a route's
  ``morph`` (:func:`gateway.config.morph.compile_morph`).
* ``retrieve: {sources, mode, allowed_destinations, timeout,
  allowed_ae_titles}``: the C-MOVE and C-GET side. ``allowed_destinations``
  are globs over the names of the ``modalities`` table (the move
  destinations, see :mod:`gateway.config.modalities`).

A listener's own section replaces the top-level one as a whole (no key-by-key
merge), as for ``commitment``.

The cross-checks that need the whole file (a source must be a DICOM
destination; a literal ``allowed_destinations`` entry must be a modality) are
in :func:`check_qr_references`, called by :mod:`gateway.config.load`; what is
allowed but worth a word is in :func:`qr_warnings` (``dicom-gateway check``).

Checkers built with the toolkit of :mod:`gateway.config.nodes`; this module
imports no other section, so :mod:`gateway.config.listeners` can use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from typing import Any, Final

import yaml

from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _check_ae_pattern,
    _check_boolean,
    _check_fields,
    _check_string,
    _child,
    _duration,
    _expected,
    _integer,
    _item,
    _list_of,
    _one_of,
    _value_node,
)
from gateway.config.schema import (
    QUERY_MODES,
    RETRIEVE_MODES,
    DicomDestination,
    GatewayConfig,
    ListenerConfig,
    QueryConfig,
    RetrieveConfig,
)
from gateway.suggest import did_you_mean

__all__ = ["MAX_QUERY_TIMEOUT", "MAX_RESULTS", "MAX_RETRIEVE_TIMEOUT", "qr_warnings"]

#: The longest ``query.timeout``: an hour (a requester's DIMSE timer is far shorter).
MAX_QUERY_TIMEOUT: Final = 3600.0

#: The longest ``retrieve.timeout``: a day (a move is not a 7-day queue entry).
MAX_RETRIEVE_TIMEOUT: Final = 86400.0

#: The largest ``query.max_results``: beyond it the guard guards nothing.
MAX_RESULTS: Final = 1_000_000

# A destination or modality name (the rules of gateway.config.destinations),
# and the same with the glob characters of fnmatch.
_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_NAME_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,256}")
_GLOB_CHARACTERS: Final = frozenset("*?[")


def _check_source_name(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept one source: a destination's name (that it is a DICOM one is checked later)."""
    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    if not _NAME.fullmatch(value):
        return ctx.error(node, path, f"{value!r} is not a destination name (1 to 64 letters, digits, '_', '.' or '-')")
    return value


def _check_sources(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``sources``: a non-empty list of destination names, each once."""
    names = _list_of(
        _check_source_name, non_empty=True, empty_message="must name at least one DICOM destination"
    )(node, path, ctx)
    if names is INVALID:
        return INVALID
    assert isinstance(node, yaml.SequenceNode) and isinstance(names, tuple)
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            return ctx.error(node.value[index], _item(path, index), f"source {name!r} is listed twice")
        seen.add(name)
    return names


def _check_destination_pattern(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept one ``allowed_destinations`` entry: a glob over ``modalities`` names."""
    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    if not _NAME_GLOB.fullmatch(value):
        return ctx.error(
            node, path, f"{value!r} is not a glob over modality names (letters, digits, '_', '.', '-', '*', '?', '[...]')"
        )
    return value


def _check_morph(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Compile ``query_morph`` / ``response_morph`` as a route's ``morph`` (:func:`compile_morph`)."""
    from gateway.config.morph import compile_morph

    if not isinstance(node, yaml.SequenceNode):
        return _expected(ctx, node, path, "a list of morph actions")
    plugins = ctx.shared.plugins
    plan = compile_morph(node, path, ctx, plugins.morph if plugins else {}, base_dir=ctx.base_dir)
    return INVALID if plan is None else plan


_QUERY_FIELDS: Final[Mapping[str, _Field]] = {
    "sources": _Field(_check_sources, required=True),
    "mode": _Field(_one_of(QUERY_MODES)),
    "timeout": _Field(_duration(0, MAX_QUERY_TIMEOUT)),
    "strict": _Field(_check_boolean),
    # PS3.4 C.4.1.1.4: C-FIND has no warning final status; past the limit the
    # query ends 0xA700 (Refused: out of resources) with an Error Comment.
    "max_results": _Field(_integer(1, MAX_RESULTS)),
    "query_morph": _Field(_check_morph),
    "response_morph": _Field(_check_morph),
    # Globs over the requester's calling AE title, as accept.calling_ae_titles.
    "allowed_ae_titles": _Field(_list_of(_check_ae_pattern, non_empty=False)),
    # PS3.4 C.4.1.2.2 / C.5.1.1: relational queries, negotiated both ways.
    "relational": _Field(_check_boolean),
}

_RETRIEVE_FIELDS: Final[Mapping[str, _Field]] = {
    "sources": _Field(_check_sources, required=True),
    "mode": _Field(_one_of(RETRIEVE_MODES)),
    "allowed_destinations": _Field(_list_of(_check_destination_pattern, non_empty=False)),
    "timeout": _Field(_duration(0, MAX_RETRIEVE_TIMEOUT)),
    "allowed_ae_titles": _Field(_list_of(_check_ae_pattern, non_empty=False)),
    # A route's name (checked against ``routes`` in check_qr_references): its morph plan morphs relayed instances.
    "route": _Field(_check_source_name),
}


def check_query(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a ``query`` section (top level or a listener's).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`QueryConfig`, or :data:`INVALID`.
    """
    values = _check_fields(node, path, ctx, _QUERY_FIELDS)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    return QueryConfig(**values)


def check_retrieve(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a ``retrieve`` section (top level or a listener's).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`RetrieveConfig`, or :data:`INVALID`.
    """
    values = _check_fields(node, path, ctx, _RETRIEVE_FIELDS)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    return RetrieveConfig(**values)


def _sections(
    root: yaml.Node | None, values: Mapping[str, Any], key: str
) -> Iterator[tuple[str, Any, yaml.Node | None]]:
    """The ``key`` sections of the file (top level, then each listener's), with path and node."""
    if values.get(key) is not None:
        yield key, values[key], _value_node(root, key) if root is not None else None
    listen_node = _value_node(root, "listen") if root is not None else None
    for index, listener in enumerate(values.get("listen", ())):
        if isinstance(listener, ListenerConfig) and getattr(listener, key) is not None:
            item_node = listen_node.value[index] if isinstance(listen_node, yaml.SequenceNode) else None
            node = _value_node(item_node, key) if item_node is not None else None
            yield _child(_item("listen", index), key), getattr(listener, key), node


def check_qr_references(root: yaml.Node, values: Mapping[str, Any], ctx: _Context) -> None:
    """Check what the ``query`` and ``retrieve`` sections name elsewhere in the file.

    * every source is a configured DICOM destination (a folder or HTTP
      destination cannot answer a C-FIND or a C-MOVE);
    * an ``allowed_destinations`` entry without glob characters names an entry
      of the ``modalities`` table (a glob matching none is only a warning).

    :param root: The document's root mapping.
    :param values: The checked top-level values.
    :param ctx: The load context.
    """
    destinations = {d.name: d for d in values.get("destinations", ())}
    dicom = sorted(name for name, d in destinations.items() if isinstance(d, DicomDestination))
    modalities = [m.name for m in values.get("modalities", ())]
    for key in ("query", "retrieve"):
        for path, section, node in _sections(root, values, key):
            sources_node = _value_node(node, "sources") if node is not None else None
            for index, name in enumerate(section.sources):
                where = sources_node.value[index] if isinstance(sources_node, yaml.SequenceNode) else node
                item_path = _item(_child(path, "sources"), index)
                if name in destinations and name not in dicom:
                    ctx.error(where, item_path, f"source {name!r} is not a DICOM destination: only a DICOM AE can answer queries and retrieves")
                elif name not in destinations:
                    hint = did_you_mean(name, dicom, show=repr) or (
                        ("DICOM destinations: " + ", ".join(dicom)) if dicom else "no DICOM destinations are configured"
                    )
                    ctx.error(where, item_path, f"unknown destination {name!r}; {hint}")
            if key != "retrieve":
                continue
            if section.route:
                # Every route of the file and of the route files (gateway.config.routes).
                routes = [r.name for r in ctx.shared.route_names] or [r.name for r in values.get("routes", ())]
                if section.route not in routes:
                    hint = did_you_mean(section.route, routes, show=repr) or (
                        ("routes: " + ", ".join(routes)) if routes else "no routes are configured"
                    )
                    route_node = _value_node(node, "route") if node is not None else None
                    ctx.error(route_node or node, _child(path, "route"), f"unknown route {section.route!r}; {hint}")
            allowed_node = _value_node(node, "allowed_destinations") if node is not None else None
            for index, pattern in enumerate(section.allowed_destinations):
                if _GLOB_CHARACTERS & set(pattern) or pattern in modalities:
                    continue
                where = allowed_node.value[index] if isinstance(allowed_node, yaml.SequenceNode) else node
                hint = did_you_mean(pattern, modalities, show=repr) or (
                    ("modalities: " + ", ".join(modalities)) if modalities else "the modalities table is empty"
                )
                ctx.error(
                    where,
                    _item(_child(path, "allowed_destinations"), index),
                    f"{pattern!r} is not an entry of the modalities table (move destinations); {hint}",
                )


def qr_warnings(config: GatewayConfig) -> list[str]:
    """What a valid configuration allows but an operator should hear about (``dicom-gateway check``).

    * a ``retrieve`` section with an empty ``modalities`` table: C-GET works,
      but every C-MOVE is refused 0xA801 (Move Destination unknown);
    * an ``allowed_destinations`` glob matching no ``modalities`` name;
    * ``max_results`` above 100000 (the guard is there to bound the sources' work).

    :param config: The loaded configuration.
    :returns: One line per warning, each starting with its key path.
    """
    values: dict[str, Any] = {"query": config.query, "retrieve": config.retrieve, "listen": config.listen}
    names = [m.name for m in config.modalities]
    warnings: list[str] = []
    for path, section, _ in _sections(None, values, "retrieve"):
        if not names:
            warnings.append(
                f"{path}: the modalities table is empty: every C-MOVE will be refused 0xA801 "
                "(Move Destination unknown); C-GET still works"
            )
        for pattern in section.allowed_destinations:
            if names and not any(fnmatchcase(name, pattern) for name in names):
                warnings.append(f"{path}.allowed_destinations: {pattern!r} matches no modalities entry; it allows nothing")
    for path, section, _ in _sections(None, values, "query"):
        if section.max_results > 100_000:
            warnings.append(
                f"{path}.max_results: {section.max_results} pending responses per query is a lot for the sources"
            )
    return warnings
