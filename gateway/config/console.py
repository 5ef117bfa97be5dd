"""The ``console`` section: the operator console under ``/console`` (issue 18).

.. code-block:: yaml

   console:
     enabled: true
     users_file: /etc/dicom-gateway/console-users   # made by dicom-gateway console-user
     session_key_file: /etc/dicom-gateway/console-key  # shared by the nodes behind one load balancer
     session_timeout: 8h      # without a request
     session_lifetime: 24h    # at most
     upload_limit: 64MiB      # the rule tester's upload
     refresh: 5s              # the overview's refresh

Paths are made absolute against the configuration file's folder. The users
file is read by the console itself (and re-read when it changes), so a bad
line skips that user with an error naming ``file:line`` instead of stopping
the gateway; a missing ``users_file`` closes the console (every page says
that no users are configured). The session key file, when given, must exist
now and hold at least 16 bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

import yaml

from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _check_boolean,
    _check_path,
    _child,
    _duration,
    _section,
    _size,
    _value_node,
)
from gateway.config.schema import ConsoleConfig

__all__ = ["check_console"]

_CONSOLE_FIELDS: Final[Mapping[str, _Field]] = {
    "enabled": _Field(_check_boolean),
    "users_file": _Field(_check_path),
    "session_key_file": _Field(_check_path),
    "session_timeout": _Field(_duration(0, 30 * 86400)),
    "session_lifetime": _Field(_duration(0, 365 * 86400)),
    "upload_limit": _Field(_size(minimum=1024)),
    "refresh": _Field(_duration(0, 3600)),
}

_check_console_fields: Final = _section(ConsoleConfig, _CONSOLE_FIELDS)


def check_console(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept the ``console`` section.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`ConsoleConfig`, or :data:`INVALID`.
    """
    console = _check_console_fields(node, path, ctx)
    if console is INVALID:
        return INVALID
    if console.session_lifetime < console.session_timeout:
        return ctx.error(
            _value_node(node, "session_lifetime"),
            _child(path, "session_lifetime"),
            f"must be at least session_timeout ({console.session_timeout:g} s)",
        )
    if console.session_key_file:
        key_path = console.session_key_file
        try:
            size = os.path.getsize(key_path)
        except OSError as error:
            return ctx.error(_value_node(node, "session_key_file"), _child(path, "session_key_file"), f"{key_path}: {error.strerror}")
        if size < 16:
            return ctx.error(
                _value_node(node, "session_key_file"),
                _child(path, "session_key_file"),
                f"{key_path}: the key must be at least 16 bytes (e.g. 'openssl rand -hex 32 > {key_path}')",
            )
    return console
