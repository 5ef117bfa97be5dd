"""The ``dicomweb`` section: the STOW-RS inbound service (issue 17).

::

    dicomweb:
      listen:
        - {host: 0.0.0.0, port: 8443, tls: {certificate: ..., private_key: ..., ca: ...}}
      auth:
        tokens_file: dicomweb-tokens      # NAME:TOKEN or NAME:sha256$<hex> lines
        certificates:                     # client certificate subject -> client name
          "CN=uploader*,O=Radiology": uploader
          "CN=ai-node": {name: ai, issuer: "CN=Hospital CA"}
        require: any                      # or all: a token AND a matching certificate
      max_request_size: 4GiB
      max_connections: 64
      header_timeout: 30s
      retrieve_url: https://pacs.example/dicomweb

Checkers built with the toolkit of :mod:`gateway.config.nodes`; the TLS
block is the DICOM listeners' (:func:`gateway.config.listeners._check_listener_tls`)
and the subject patterns theirs (:mod:`gateway.subject`). The tokens file is
read at load, so a bad line is reported with its file and line number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from gateway.config.errors import ConfigError
from gateway.config.listeners import _check_listener_tls, _check_name_pattern
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _STR,
    _check_path,
    _check_string,
    _child,
    _duration,
    _integer,
    _list_of,
    _mapping_entries,
    _one_of,
    _section,
    _size,
    _value_node,
)
from gateway.config.schema import (
    DICOMWEB_AUTH_REQUIREMENTS,
    DicomWebAuthConfig,
    DicomWebClientCertificate,
    DicomWebListenConfig,
    DicomWebServiceConfig,
)

__all__ = ["check_dicomweb"]

_LISTEN_FIELDS: Final[Mapping[str, _Field]] = {
    "host": _Field(_check_string),
    "port": _Field(_integer(0, 65535), required=True),
    "tls": _Field(_check_listener_tls),
}


def _check_client_name(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a client name: 1-64 of ``A-Z a-z 0-9 . _ @ -`` (as in the tokens file)."""
    import re

    name = _check_string(node, path, ctx)
    if name is INVALID:
        return INVALID
    if not re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", name):
        return ctx.error(node, path, "a client name is 1 to 64 of A-Z a-z 0-9 . _ @ -")
    return name


def _check_client_certificates(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``certificates``: subject patterns mapped to a client name, or to ``{name, issuer}``.

    :returns: a tuple of :class:`DicomWebClientCertificate`, or :data:`INVALID`.
    """
    entries = _mapping_entries(node, path, ctx)
    if entries is INVALID:
        return INVALID
    assert isinstance(entries, dict)
    result = []
    ok = True
    for subject, (key_node, value_node) in entries.items():
        where = _child(path, subject)
        if _check_name_pattern(key_node, where, ctx) is INVALID:
            ok = False
        issuer: Any = ""
        if isinstance(value_node, yaml.ScalarNode) and value_node.tag == _STR:
            name = _check_client_name(value_node, where, ctx)
        elif isinstance(value_node, yaml.MappingNode):
            fields = _mapping_entries(value_node, where, ctx)
            assert isinstance(fields, dict)
            name = INVALID
            for key, (inner_key, _inner) in fields.items():
                if key not in ("name", "issuer"):
                    ctx.error(inner_key, _child(where, key), "unknown key; expected 'name' or 'issuer'")
                    ok = False
            if "name" in fields:
                name = _check_client_name(fields["name"][1], _child(where, "name"), ctx)
            else:
                ctx.error(value_node, where, "missing 'name': the client name this certificate gives")
            if "issuer" in fields:
                issuer = _check_name_pattern(fields["issuer"][1], _child(where, "issuer"), ctx)
        else:
            name = ctx.error(value_node, where, "expected a client name, or {name: ..., issuer: ...}")
        if name is INVALID or issuer is INVALID:
            ok = False
            continue
        result.append(DicomWebClientCertificate(subject, name, issuer))
    return tuple(result) if ok else INVALID


_AUTH_FIELDS: Final[Mapping[str, _Field]] = {
    "tokens_file": _Field(_check_path),
    "certificates": _Field(_check_client_certificates),
    "require": _Field(_one_of(DICOMWEB_AUTH_REQUIREMENTS)),
}

_check_auth_fields: Final = _section(DicomWebAuthConfig, _AUTH_FIELDS)


def _check_auth(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``dicomweb.auth``: at least one way in; the tokens file read now (bad lines named)."""
    from gateway.dicomweb.tokens import read_tokens

    auth = _check_auth_fields(node, path, ctx)
    if auth is INVALID:
        return INVALID
    if not auth.tokens_file and not auth.certificates:
        return ctx.error(node, path, "give 'tokens_file', 'certificates' or both: the service is never open")
    if auth.require == "all" and not (auth.tokens_file and auth.certificates):
        return ctx.error(
            _value_node(node, "require"), _child(path, "require"), "'all' needs both 'tokens_file' and 'certificates'"
        )
    if not auth.tokens_file:
        return auth
    tokens, problems = read_tokens(auth.tokens_file)
    for problem in problems:
        if problem.line is not None:
            ctx.errors.append(ConfigError(auth.tokens_file, problem.line, _child(path, "tokens_file"), problem.message))
        else:
            ctx.error(_value_node(node, "tokens_file"), _child(path, "tokens_file"), f"{auth.tokens_file}: {problem.message}")
    return INVALID if problems else replace(auth, tokens=tokens)


def _check_retrieve_url(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept an absolute ``http``/``https`` URL without query or fragment (trailing slash removed)."""
    url = _check_string(node, path, ctx)
    if url is INVALID:
        return INVALID
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return ctx.error(node, path, "expected an absolute http:// or https:// URL without query or fragment")
    return url.rstrip("/")


_FIELDS: Final[Mapping[str, _Field]] = {
    "listen": _Field(
        _list_of(_section(DicomWebListenConfig, _LISTEN_FIELDS), non_empty=True, empty_message="list at least one address"),
        required=True,
    ),
    "auth": _Field(_check_auth, required=True),
    "max_request_size": _Field(_size(1024)),
    "max_connections": _Field(_integer(1, 10_000)),
    "header_timeout": _Field(_duration(0, 3600.0)),
    "retrieve_url": _Field(_check_retrieve_url),
}

_check_fields: Final = _section(DicomWebServiceConfig, _FIELDS)


def check_dicomweb(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept the ``dicomweb`` section.

    Certificate rules need a TLS address that asks for client certificates
    (``tls.ca``): on any other they could never match.

    :param node: The value node.
    :param path: Its key path (``dicomweb``).
    :param ctx: The load context.
    :returns: A :class:`DicomWebServiceConfig`, or :data:`INVALID`.
    """
    config = _check_fields(node, path, ctx)
    if config is INVALID:
        return INVALID
    if config.auth.certificates and not any(a.tls is not None and a.tls.ca for a in config.listen):
        auth_node = _value_node(node, "auth")
        return ctx.error(
            None if auth_node is None else _value_node(auth_node, "certificates"),
            "dicomweb.auth.certificates",
            "needs an address with tls.ca: client certificates are asked for only there",
        )
    return config
