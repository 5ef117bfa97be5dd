"""The remaining top-level configuration sections.

``spool``, ``queue``, ``duplicates``, ``retention``, ``log``, ``http``,
``metrics``, ``plugins`` and ``audit``.

Checkers built with the toolkit of :mod:`gateway.config.nodes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields as dataclass_fields, replace
from typing import Any, Final

import yaml

from gateway.config.errors import ConfigError
from gateway.config.schema import GatewayConfig, HttpConfig, RotateConfig, SyslogConfig, SpoolConfig
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _STR,
    _check_boolean,
    _check_path,
    _check_string,
    _child,
    _duration,
    _expected,
    _integer,
    _list_of,
    _section,
    _size,
    _value_node,
)
from gateway.config.destinations import _MAX_AGE_SECONDS
from gateway.config.listeners import _check_listener_tls

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
# Issue 14: how long a draining node still accepts new associations (0: refuse at once).
_DRAIN_FIELDS: Final[Mapping[str, _Field]] = {
    "grace": _Field(_duration(0, 3600.0, zero_allowed=True)),
}

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
