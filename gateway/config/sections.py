"""The remaining top-level configuration sections.

``node``, ``spool``, ``queue``, ``cluster``, ``duplicates``, ``retention``,
``log``, ``http``, ``metrics``, ``plugins`` and ``audit``.

Checkers built with the toolkit of :mod:`gateway.config.nodes`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import fields as dataclass_fields, replace
from typing import Any, Final

import yaml

from gateway.config.errors import ConfigError
from gateway.config.schema import (
    NODE_NAME_PATTERN,
    QUEUE_BACKENDS,
    ClusterConfig,
    GatewayConfig,
    HttpConfig,
    QueueConfig,
    RotateConfig,
    SpoolConfig,
    SyslogConfig,
)
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _STR,
    _check_boolean,
    _check_fields,
    _check_path,
    _check_string,
    _child,
    _duration,
    _expected,
    _integer,
    _list_of,
    _one_of,
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
    # Cross-checked with queue.backend in load.py (SQLite on NFS is not safe).
    "shared": _Field(_check_boolean),
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


def _retention(
    keep_delivered: float = _default_of("keep_delivered"),
    retrieves: float = _default_of("retrieve_retention"),
    remapped_uids: float = _default_of("remap_retention"),
    studies: float = _default_of("study_retention"),
) -> dict[str, float]:
    """The ``retention`` section's values by :class:`GatewayConfig` field (``load._assemble`` spreads them)."""
    return {"keep_delivered": keep_delivered, "retrieve_retention": retrieves, "remap_retention": remapped_uids,
            "study_retention": studies}


# ``retention``: delivered spool files, and (issue 16) the journal's finished
# retrieves and its remapped UIDs unused that long (0: kept forever).
_check_retention: Final = _section(
    _retention,
    {
        "keep_delivered": _Field(_duration(0, _MAX_AGE_SECONDS, zero_allowed=True)),
        "retrieves": _Field(_duration(0, _MAX_AGE_SECONDS, zero_allowed=True)),
        "remapped_uids": _Field(_duration(0, _MAX_AGE_SECONDS, zero_allowed=True)),
        # Issue 18 (notify): completed studies' rows (0: kept forever).
        "studies": _Field(_duration(0, _MAX_AGE_SECONDS, zero_allowed=True)),
    },
)
def _check_node_name(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``node``: 1 to 64 of ``A-Z a-z 0-9 . _ -`` (it goes into file names, leases and labels).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The name, or :data:`INVALID`.
    """
    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    if not re.fullmatch(NODE_NAME_PATTERN, value):
        return ctx.error(node, path, f"must be 1 to 64 of A-Z a-z 0-9 . _ - (a safe file name), got {value!r}")
    return value


def dsn_has_password(dsn: str) -> bool:
    """Tell whether a libpq connection string or URI carries a password.

    Both forms of libpq's "Connection Strings" (PostgreSQL 15 documentation,
    34.1.1): ``postgresql://user:secret@host/db`` or ``?password=`` in a
    URI, and ``password=...`` among ``keyword=value`` pairs.

    :param dsn: The connection string.
    :returns: ``True`` when a password is in it.
    """
    text = dsn.strip()
    if re.match(r"postgres(?:ql)?://", text, re.IGNORECASE):
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(text)
        userinfo, at, _hosts = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            return True
        return any(key.lower() == "password" for key in parse_qs(parts.query, keep_blank_values=True))
    return re.search(r"(?:^|\s)password\s*=", text, re.IGNORECASE) is not None


def _check_dsn(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``queue.dsn``: a libpq connection string without a password (never echoed back).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The DSN, or :data:`INVALID`.
    """
    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    if dsn_has_password(value):
        return ctx.error(
            node, path, "the DSN must not carry a password; put it in queue.password_file (mode 0600) instead"
        )
    return value


#: The longest password file read (a password is one line).
MAX_PASSWORD_FILE_BYTES: Final = 4096


def read_password_file(file_path: str) -> tuple[str, str]:
    """Read ``queue.password_file``: a private regular file whose first line is the password.

    Private like the gateway's other secrets (``http-token``, TLS keys): mode
    0600 or stricter, so no other user of the machine reads the password.
    Symbolic links are followed (mounted secrets are links).

    :param file_path: The file.
    :returns: ``(password, "")``, or ``("", problem)``; the problem never quotes the file's content.
    """
    try:
        fd = os.open(file_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        return "", f"cannot read the password file {file_path}: {error.strerror or error}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "", f"the password file {file_path} is not a regular file"
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            return "", f"the password file {file_path} has mode {mode:04o}: others may read it; chmod 600 it"
        data = os.read(fd, MAX_PASSWORD_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        return "", f"the password file {file_path} is larger than {MAX_PASSWORD_FILE_BYTES} bytes"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "", f"the password file {file_path} is not UTF-8 text"
    lines = text.splitlines()
    password = lines[0].strip("\r\n") if lines else ""
    if not password:
        return "", f"the password file {file_path} is empty (expected the password on its first line)"
    return password, ""


def _pool(min: int = 1, max: int = 4) -> tuple[int, int]:  # noqa: A002 - the YAML keys
    """``queue.pool`` as ``(min, max)``."""
    return min, max


def _timeouts(connect: float = 5.0, statement: float = 10.0) -> tuple[float, float]:
    """``queue.timeouts`` as ``(connect, statement)``."""
    return connect, statement


_QUEUE_FIELDS: Final[Mapping[str, _Field]] = {
    "backend": _Field(_one_of(QUEUE_BACKENDS)),
    # An empty path means the default, <spool>/queue.sqlite (GatewayConfig).
    "path": _Field(_check_path),
    "dsn": _Field(_check_dsn),
    "password_file": _Field(_check_path),
    "pool": _Field(
        _section(_pool, {"min": _Field(_integer(1, 100)), "max": _Field(_integer(1, 100))})
    ),
    "timeouts": _Field(
        _section(
            _timeouts,
            {"connect": _Field(_duration(0, 300)), "statement": _Field(_duration(0, 3600))},
        )
    ),
}

#: The keys that only the PostgreSQL store reads.
_POSTGRESQL_ONLY: Final = ("dsn", "password_file", "pool", "timeouts")


def _check_queue(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept the ``queue`` section: the SQLite file, or PostgreSQL's DSN, password file, pool and timeouts.

    The password file is read now, so a missing or readable-by-others file is
    reported with its line, and the password itself is never in the
    configuration file (nor in the DSN).

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`QueueConfig`, or :data:`INVALID`.
    """
    values = _check_fields(node, path, ctx, _QUEUE_FIELDS, null_is_empty=True)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    backend = values.get("backend", "sqlite")
    ok = True
    if backend == "sqlite":
        for key in _POSTGRESQL_ONLY:
            if key in values:
                ok = False
                ctx.error(_value_node(node, key), _child(path, key), "only the postgresql backend reads it (queue.backend: postgresql)")
    else:
        if "path" in values:
            ok = False
            ctx.error(_value_node(node, "path"), _child(path, "path"), "only the sqlite backend reads it")
        if "dsn" not in values:
            ok = False
            ctx.error(node, _child(path, "dsn"), "required with backend postgresql")
    pool_min, pool_max = values.get("pool", _pool())
    if pool_min > pool_max:
        ok = False
        ctx.error(
            _value_node(_value_node(node, "pool") or node, "min") or node,
            _child(_child(path, "pool"), "min"),
            f"must be at most pool.max ({pool_max}), got {pool_min}",
        )
    password = ""
    if "password_file" in values and backend == "postgresql":
        password, problem = read_password_file(values["password_file"])
        if problem:
            ok = False
            ctx.error(_value_node(node, "password_file"), _child(path, "password_file"), problem)
    if not ok:
        return INVALID
    connect, statement = values.get("timeouts", _timeouts())
    return QueueConfig(
        backend=backend,
        path=values.get("path", ""),
        dsn=values.get("dsn", ""),
        password_file=values.get("password_file", ""),
        password=password,
        pool_min=pool_min,
        pool_max=pool_max,
        connect_timeout=connect,
        statement_timeout=statement,
    )


_check_cluster_fields: Final = _section(
    ClusterConfig, {"lease": _Field(_duration(0, 3600)), "heartbeat": _Field(_duration(0, 600))}
)


# Issue 14: how long a draining node still accepts new associations (0: refuse at once).
_DRAIN_FIELDS: Final[Mapping[str, _Field]] = {
    "grace": _Field(_duration(0, 3600.0, zero_allowed=True)),
}



def _check_cluster(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``cluster: {lease, heartbeat}``; a lease must outlast two heartbeats.

    A send in flight renews its lease at each heartbeat: with a lease of at
    most two heartbeats, one late renewal (a busy reactor, a slow commit)
    would hand a live node's entry to another node.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`ClusterConfig`, or :data:`INVALID`.
    """
    cluster = _check_cluster_fields(node, path, ctx)
    if cluster is INVALID:
        return INVALID
    if not cluster.lease > 2 * cluster.heartbeat:
        key = "lease" if _value_node(node, "lease") is not None else "heartbeat"
        return ctx.error(
            _value_node(node, key) or node,
            _child(path, key),
            f"the lease ({cluster.lease:g}s) must be more than twice the heartbeat ({cluster.heartbeat:g}s)",
        )
    return cluster


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
