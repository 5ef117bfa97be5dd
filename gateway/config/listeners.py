"""Configuration sections of the receiving side: ``listen`` (TLS, access, user identity), ``accept`` and ``limits``.

Checkers built with the toolkit of :mod:`gateway.config.nodes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import yaml

from gateway.config.schema import (
    ListenerConfig,
    CertificateBinding,
    ListenerAccessConfig,
    ListenerTLSConfig,
    ProxyProtocolConfig,
    TLS_PROFILES,
    USER_IDENTITY_POLICIES,
    UserIdentityConfig,
)
from gateway.config.commitment import check_commitment
from gateway.config.qr import check_query, check_retrieve
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _STR,
    _check_ae_pattern,
    _check_boolean,
    _check_path,
    _check_string,
    _child,
    _duration,
    _integer,
    _item,
    _list_of,
    _mapping_entries,
    _one_of,
    _section,
    _size,
    _value_node,
)

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

# Issue 14: the proxies a PROXY protocol header is accepted from, and how long one has to send it.
_PROXY_PROTOCOL_FIELDS: Final[Mapping[str, _Field]] = {
    "trusted": _Field(
        _list_of(_check_network, non_empty=True, empty_message="list the proxies' networks (e.g. [10.0.0.5/32])"),
        required=True,
    ),
    "timeout": _Field(_duration(0, 300.0)),
}

_LISTENER_FIELDS: Final[Mapping[str, _Field]] = {
    "host": _Field(_check_string, required=True),
    # Port 0 asks the system for any free port, which tests rely on.
    "port": _Field(_integer(0, 65535), required=True),
    "name": _Field(_check_string),
    "tls": _Field(_check_listener_tls),
    "access": _Field(_section(ListenerAccessConfig, _ACCESS_FIELDS)),
    "user_identity": _Field(_section(UserIdentityConfig, _USER_IDENTITY_FIELDS)),
    "proxy_protocol": _Field(_section(ProxyProtocolConfig, _PROXY_PROTOCOL_FIELDS)),
    # Issue 15: this listener's Storage Commitment SCP; replaces the top-level section as a whole.
    "commitment": _Field(check_commitment),
    # Issue 16: this listener's Query/Retrieve SCP; each replaces the top-level section as a whole.
    "query": _Field(check_query),
    "retrieve": _Field(check_retrieve),
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
