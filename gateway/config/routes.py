"""Configuration section ``routes``: forward lists, ``match``, ``morph`` and ``reject``, and the cross-file references.

A route's ``match`` and ``morph`` are compiled by :mod:`gateway.config.match`
and :mod:`gateway.config.morph`, reporting through the load context.
Destination names and route names are recorded while checking and resolved
by :func:`_check_references` once every file is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import yaml

from gateway.config.schema import RouteConfig
from gateway.suggest import did_you_mean
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _NameRef,
    _STR,
    _check_boolean,
    _check_fields,
    _check_string,
    _child,
    _is_null,
    _item,
    _list_of,
    _value_node,
)


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

def _check_notify(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a route's ``notify`` section (:func:`gateway.config.notify.check_notify`)."""
    from gateway.config.notify import check_notify

    return check_notify(node, path, ctx)


_ROUTE_FIELDS: Final[Mapping[str, _Field]] = {
    "name": _Field(_check_string, required=True),
    "forward": _Field(_check_forward),
    "match": _Field(_check_match),
    "morph": _Field(_check_morph),
    "final": _Field(_check_boolean),
    "drop": _Field(_check_boolean),
    "reject": _Field(_check_reject),
    # Issue 18 (notify): tell sinks when a study reached the route's destinations.
    "notify": _Field(_check_notify),
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
    if values.get("notify") is not None and not values.get("forward"):
        return ctx.error(_value_node(node, "notify"), _child(path, "notify"),
                         "a route that forwards nothing has no study to notify")
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
        hint = did_you_mean(ref.name, sorted(names), show=repr)
        if not hint:
            hint = ("configured destinations: " + ", ".join(sorted(names))) if names else "no destinations are configured"
        ref.ctx.error(ref.node, ref.key_path, f"unknown destination {ref.name!r}; {hint}")
    # Issue 18 (notify): notify.sinks names sinks only, forward names none.
    from gateway.config.notify import check_sink_references

    check_sink_references(ctx)


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
