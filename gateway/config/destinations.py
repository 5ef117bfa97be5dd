"""Configuration section ``destinations``: DICOM peers and folders, their retry, circuit and timeouts.

Checkers built with the toolkit of :mod:`gateway.config.nodes`, and the
check that no folder destination lies inside the spool.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from typing import Any, Final

import yaml

from gateway.config.schema import (
    FOLDER_PATTERN_FIELDS,
    CircuitConfig,
    DicomDestination,
    DicomWebAuth,
    DicomWebBatch,
    DicomWebDestination,
    DicomWebTLSConfig,
    FolderDestination,
    DestinationTLSConfig,
    RetryConfig,
    SpoolConfig,
)
from gateway.codecs import LOSSY_TARGETS
from gateway.config.tsyntax import TRANSFER_SYNTAX_FIELDS, policy_of
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _Invalid,
    _by_attr,
    _check_boolean,
    _check_ae_title,
    _check_fields,
    _check_path,
    _check_string,
    _child,
    _duration,
    _expected,
    _integer,
    _is_null,
    _mapping_entries,
    _number,
    _one_of,
    _section,
    _size,
    _value_node,
)
from gateway.config.listeners import _MAX_TIMER_SECONDS, _check_tls_profile
from gateway.suggest import did_you_mean

# Issue 16 (retrieve_by), imported apart to keep other branches' import hunks clean.
from gateway.config.nodes import _one_of
from gateway.config.schema import RETRIEVE_BY


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

#: Destination names reserved for the C-MOVE queues (issue 16; ``gateway.qr.move.MOVE_DESTINATION_PREFIX``).
_RESERVED_PREFIX: Final = "move."


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
    # Issue 16: how a C-GET retrieves from this archive as a Q/R source (auto: its
    # C-GET when it accepts a GET context, else a C-MOVE to the gateway).
    "retrieve_by": _Field(_one_of(RETRIEVE_BY)),
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
    # Issue 15: the archive confirms what it stores through Storage Commitment
    # (PS3.4 Annex J); the gateway asks it as SCU under the 'committed' policy.
    "storage_commitment": _Field(_check_boolean),
    # How long to wait for the archive's N-EVENT-REPORT before asking again.
    "commitment_timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    # Issue 17: the transfer syntax the destination gets (``transfer_syntax``, ``lossy``).
    **TRANSFER_SYNTAX_FIELDS,
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
            hint = did_you_mean(name, FOLDER_PATTERN_FIELDS, n=2, show=lambda field: f"{{{field}}}") or (
                "use one of " + ", ".join(f"{{{field}}}" for field in FOLDER_PATTERN_FIELDS)
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
    if _DICOMWEB_KIND_KEY in keys:
        return _check_dicomweb_destination(name, key_node, node, path, ctx, keys)
    # Issue 18 (notify): notification sinks, settings inside webhook:/hl7:/fhir:.
    from gateway.config.notify import SINK_KIND_KEYS, check_sink_destination

    for sink_kind in SINK_KIND_KEYS:
        if sink_kind in keys:
            return check_sink_destination(name, sink_kind, key_node, node, path, ctx, keys)
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
            "(ae_title, host and port) nor a DICOMweb server (dicomweb:) nor a notification sink "
            "(webhook:, hl7:, fhir:); give one of them",
        )
    values = _check_fields(node, path, ctx, _DICOM_FIELDS, foreign=_ONLY_FOLDER)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    timeouts = values.pop("timeouts", {})
    values.setdefault("calling_ae_title", "")
    policy = policy_of(values, node, path, ctx)
    if policy is INVALID:
        return INVALID
    if policy.lossy and policy.target in LOSSY_TARGETS and values.get("storage_commitment"):
        # A lossy copy is a new instance with a new SOP Instance UID (PS3.3 C.7.6.1.1.5): the
        # archive can never commit the instance the modality sent, so the pair is refused.
        return ctx.error(node, f"{path}.transfer_syntax",
                         f"{policy.target!r} is lossy (a new SOP Instance UID) and cannot be combined with"
                         " storage_commitment: true (the archive would be asked to commit the original)")
    for key in TRANSFER_SYNTAX_FIELDS:
        values.pop(key, None)
    return DicomDestination(name=name, **_by_attr(values, _DICOM_FIELDS), **timeouts, policy=policy)


# --------------------------------------------------------------------------
# DICOMweb (STOW-RS) destinations (issue 17)

_DICOMWEB_KIND_KEY: Final = "dicomweb"

#: The keys each authentication kind needs (all required) beside ``kind``.
_AUTH_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "none": (),
    # RFC 7617.
    "basic": ("username", "password_file"),
    # RFC 6750.
    "bearer": ("token_file",),
    # RFC 6749 4.4: client credentials grant.
    "oauth2": ("token_url", "client_id", "client_secret_file"),
}
_AUTH_OPTIONAL: Final[Mapping[str, tuple[str, ...]]] = {"oauth2": ("scope",)}


def _check_http_url(node: yaml.Node, path: str, ctx: _Context) -> str | _Invalid:
    """Accept an ``http`` or ``https`` URL with a host and no user information.

    Credentials in a URL would end up in logs and dumps of the configuration;
    they belong in ``auth`` (whose secrets live in files). A trailing ``/``
    is dropped so ``{url}/studies`` has one slash.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: The URL, or :data:`INVALID`.
    """
    from urllib.parse import urlsplit

    value = _check_string(node, path, ctx)
    if value is INVALID:
        return INVALID
    assert isinstance(value, str)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        return ctx.error(node, path, f"invalid URL: {error}")
    if parts.scheme not in ("http", "https"):
        return ctx.error(node, path, f"the URL must start with http:// or https://, not {parts.scheme or 'nothing'}")
    if not parts.hostname:
        return ctx.error(node, path, "the URL has no host")
    if parts.username is not None or parts.password is not None:
        # Never echo the value: it holds a credential.
        return ctx.error(node, path, "the URL must not carry user information (user:password@); use auth")
    if parts.fragment or any(c.isspace() for c in value):
        return ctx.error(node, path, "the URL must not contain spaces or a #fragment")
    return value.rstrip("/") if not parts.query else value


def _check_auth(node: yaml.Node, path: str, ctx: _Context) -> DicomWebAuth | _Invalid:
    """Accept a DICOMweb destination's ``auth`` section: ``kind`` and that kind's keys.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`DicomWebAuth`, or :data:`INVALID`.
    """
    fields: dict[str, _Field] = {
        "kind": _Field(_one_of(tuple(_AUTH_KEYS)), required=True),
        "username": _Field(_check_string),
        "password_file": _Field(_check_path),
        "token_file": _Field(_check_path),
        "token_url": _Field(_check_http_url),
        "client_id": _Field(_check_string),
        "client_secret_file": _Field(_check_path),
        "scope": _Field(_check_string),
    }
    values = _check_fields(node, path, ctx, fields)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    kind = values["kind"]
    needed = _AUTH_KEYS[kind]
    allowed = set(needed) | set(_AUTH_OPTIONAL.get(kind, ())) | {"kind"}
    problems = False
    for key in needed:
        if key not in values:
            ctx.error(node, _child(path, key), f"required for kind {kind}")
            problems = True
    for key in values:
        if key not in allowed:
            ctx.error(_value_node(node, key) or node, _child(path, key), f"{key!r} does not apply to kind {kind}")
            problems = True
    return INVALID if problems else DicomWebAuth(**values)


def _check_dicomweb_tls(node: yaml.Node, path: str, ctx: _Context) -> DicomWebTLSConfig | _Invalid:
    """Accept a DICOMweb destination's ``tls``: a client certificate needs its key and the reverse."""
    tls = _section(
        DicomWebTLSConfig,
        {"ca": _Field(_check_path), "certificate": _Field(_check_path), "private_key": _Field(_check_path)},
    )(node, path, ctx)
    if tls is INVALID:
        return INVALID
    assert isinstance(tls, DicomWebTLSConfig)
    if bool(tls.certificate) != bool(tls.private_key):
        return ctx.error(node, path, "certificate and private_key go together (mutual TLS)")
    return tls


_DICOMWEB_FIELDS: Final[Mapping[str, _Field]] = {
    "url": _Field(_check_http_url, required=True),
    "auth": _Field(_check_auth),
    "batch": _Field(
        _section(
            DicomWebBatch,
            {"max_instances": _Field(_integer(1, 10000)), "max_bytes": _Field(_size(1))},
        )
    ),
    "timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    "connections": _Field(_integer(1, 64)),
    "tls": _Field(_check_dicomweb_tls),
    "probe_url": _Field(_check_http_url),
    "retry": _Field(_check_retry),
    "circuit": _Field(_section(CircuitConfig, _CIRCUIT_FIELDS)),
    **TRANSFER_SYNTAX_FIELDS,
}


def _check_dicomweb_destination(
    name: str, key_node: yaml.Node, node: yaml.MappingNode, path: str, ctx: _Context, keys: set[str]
) -> DicomWebDestination | _Invalid:
    """Accept a destination whose one key is ``dicomweb:`` (a STOW-RS server, PS3.18 10.5).

    :param name: The destination's name.
    :param key_node: The name's node.
    :param node: The destination's mapping node.
    :param path: Its key path.
    :param ctx: The load context.
    :param keys: The destination's keys.
    :returns: A :class:`DicomWebDestination`, or :data:`INVALID`.
    """
    others = sorted(keys - {_DICOMWEB_KIND_KEY})
    if others:
        return ctx.error(
            key_node,
            path,
            f"destination {name!r} is a DICOMweb destination (dicomweb:); its settings go inside "
            f"dicomweb:, not beside it ({', '.join(others)})",
        )
    section = _value_node(node, _DICOMWEB_KIND_KEY)
    assert section is not None
    section_path = _child(path, _DICOMWEB_KIND_KEY)
    values = _check_fields(section, section_path, ctx, _DICOMWEB_FIELDS)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    policy = policy_of(values, section, section_path, ctx)
    if policy is INVALID:
        return INVALID
    values.pop("transfer_syntax", None)
    values.pop("lossy", None)
    tls = values.get("tls")
    if tls is not None and str(values["url"]).startswith("http://") and (tls.ca or tls.certificate):
        return ctx.error(_value_node(section, "tls"), _child(section_path, "tls"),
                         "tls applies to an https:// URL, and the url is http://")
    return DicomWebDestination(name=name, policy=policy, **values)


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
        if name.startswith(_RESERVED_PREFIX):
            # Issue 16: each ``modalities`` entry's C-MOVE queue is the destination
            # ``move.<name>`` (gateway.qr.move.MOVE_DESTINATION_PREFIX); a configured
            # destination of that name would share its queue.
            ctx.error(
                key_node,
                dest_path,
                f"invalid destination name {name!r}: names starting with {_RESERVED_PREFIX!r} "
                "are the C-MOVE queues of the modalities table",
            )
            destinations.append(INVALID)
            continue
        destinations.append(_check_destination(name, key_node, value_node, dest_path, ctx))
    if any(destination is INVALID for destination in destinations):
        return INVALID
    return tuple(destinations)


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
