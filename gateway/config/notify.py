"""Configuration of notifications (issue 18): sink destinations, a route's ``notify``, ``retention.studies``.

::

    destinations:
      ris-hook:
        webhook: {url: http://127.0.0.1:9000/hook, secret_file: /etc/gw/hook.key, phi: false, timeout: 30s}
        retry: {initial_delay: 5s}
        circuit: {failures: 5}
      ris-hl7:
        hl7: {host: 127.0.0.1, port: 2575, receiving_application: RIS}
      fhir:
        fhir: {url: https://fhir/r4, subject: identifier, patient_system: "urn:oid:1.2.3"}
    routes:
      - name: ct
        forward: [pacs]
        notify: {sinks: [ris-hook], quiet_period: 60s, max_wait: 6h,
                 expect_series: [{series_number: 1, instances: 10}, {modality: SR}], expect_count: false}

A sink is a destination whose one kind key is ``webhook:``, ``hl7:`` or
``fhir:``; its settings go inside that key (as a DICOMweb destination's go
inside ``dicomweb:``) and only ``retry`` and ``circuit``, which every kind
of destination shares, go beside it. Routes' ``forward`` lists may not
name a sink (it gets study notifications, not instances) and ``notify.sinks``
must name sinks only: both are checked once every file is read
(:func:`check_sink_references`), with the file and line of the offending name.

Checkers built with the toolkit of :mod:`gateway.config.nodes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import yaml

from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _NameRef,
    _check_boolean,
    _check_fields,
    _check_path,
    _check_string,
    _child,
    _duration,
    _integer,
    _item,
    _list_of,
    _one_of,
    _section,
    _value_node,
)
from gateway.config.schema import (
    CircuitConfig,
    DestinationTLSConfig,
    ExpectSeries,
    FhirSink,
    Hl7Sink,
    NotifyConfig,
    WebhookSink,
)

__all__ = [
    "SINK_KIND_KEYS",
    "check_sink_destination",
    "check_notify",
    "check_sink_references",
]

#: The key that makes a destination a sink, and the sink's configuration type.
SINK_KIND_KEYS: Final[Mapping[str, type]] = {"webhook": WebhookSink, "hl7": Hl7Sink, "fhir": FhirSink}

# The longest quiet period / max_wait accepted: 30 days (longer is a typo; the
# studies table keeps open rows that long).
_MAX_WAIT_SECONDS: Final = 30 * 86400.0
# A sink's own request timeout, at most one hour.
_MAX_TIMEOUT: Final = 3600.0


def _fields() -> dict[str, Mapping[str, _Field]]:
    """The fields inside each sink kind's key (built lazily: the checkers live in destinations.py)."""
    from gateway.config.destinations import _check_auth, _check_dicomweb_tls, _check_http_url
    from gateway.config.listeners import _check_tls_profile

    destination_tls = _Field(
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
    )
    return {
        "webhook": {
            "url": _Field(_check_http_url, required=True),
            "secret_file": _Field(_check_path, required=True),
            "phi": _Field(_check_boolean),
            "timeout": _Field(_duration(0, _MAX_TIMEOUT)),
            "tls": _Field(_check_dicomweb_tls),
            "auth": _Field(_check_auth),
        },
        "hl7": {
            "host": _Field(_check_string, required=True),
            "port": _Field(_integer(1, 65535), required=True),
            "tls": destination_tls,
            "template": _Field(_check_path),
            "sending_application": _Field(_check_string),
            "sending_facility": _Field(_check_string),
            "receiving_application": _Field(_check_string),
            "receiving_facility": _Field(_check_string),
            "version": _Field(_one_of(("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"))),
            "phi": _Field(_check_boolean),
            "on_error": _Field(_one_of(("dead", "retry"))),
            "on_reject": _Field(_one_of(("retry", "dead"))),
            "reject_retries": _Field(_integer(0, 1000)),
            "timeout": _Field(_duration(0, _MAX_TIMEOUT)),
        },
        "fhir": {
            "url": _Field(_check_http_url, required=True),
            "auth": _Field(_check_auth),
            "tls": _Field(_check_dicomweb_tls),
            "subject": _Field(_one_of(("identifier", "search"))),
            "patient_system": _Field(_check_string),
            "phi": _Field(_check_boolean),
            "endpoint": _Field(_check_string),
            "timeout": _Field(_duration(0, _MAX_TIMEOUT)),
        },
    }


def check_sink_destination(
    name: str, kind: str, key_node: yaml.Node, node: yaml.MappingNode, path: str, ctx: _Context, keys: set[str]
) -> Any:
    """Accept a destination whose kind key is ``webhook:``, ``hl7:`` or ``fhir:``.

    :param name: The destination's name.
    :param kind: The kind key found.
    :param key_node: The name's node.
    :param node: The destination's mapping node.
    :param path: Its key path.
    :param ctx: The load context.
    :param keys: The destination's keys.
    :returns: A :class:`WebhookSink`, :class:`Hl7Sink` or :class:`FhirSink`, or :data:`INVALID`.
    """
    from gateway.config.destinations import _CIRCUIT_FIELDS, _check_retry

    # Recorded even when the sink turns out invalid, so a route naming it is not reported again.
    sinks = getattr(ctx.shared, "sink_names", None)
    if sinks is None:
        sinks = ctx.shared.sink_names = set()
    sinks.add(name)
    kinds = sorted(keys & set(SINK_KIND_KEYS))
    if len(kinds) > 1:
        return ctx.error(key_node, path, f"destination {name!r} names two sink kinds ({', '.join(kinds)}); give one")
    others = sorted(keys - {kind, "retry", "circuit"})
    if others:
        return ctx.error(
            key_node,
            path,
            f"destination {name!r} is a {kind} sink ({kind}:); its settings go inside {kind}:, "
            f"only retry and circuit beside it ({', '.join(others)})",
        )
    beside = _check_fields(
        node,
        path,
        ctx,
        {
            kind: _Field(lambda n, p, c: n),
            "retry": _Field(_check_retry),
            "circuit": _Field(_section(CircuitConfig, _CIRCUIT_FIELDS)),
        },
    )
    section = _value_node(node, kind)
    assert section is not None
    section_path = _child(path, kind)
    values = _check_fields(section, section_path, ctx, _fields()[kind])
    if values is INVALID or beside is INVALID:
        return INVALID
    assert isinstance(values, dict) and isinstance(beside, dict)
    for key in ("retry", "circuit"):
        if key in beside:
            values[key] = beside[key]
    tls = values.get("tls")
    if kind in ("webhook", "fhir") and tls is not None and str(values["url"]).startswith("http://") and (
        tls.ca or tls.certificate
    ):
        return ctx.error(_value_node(section, "tls"), _child(section_path, "tls"),
                         "tls applies to an https:// URL, and the url is http://")
    return SINK_KIND_KEYS[kind](name=name, **values)


def _check_expect_series(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept one ``expect_series`` item: a series number, a modality, or both, and a count."""
    item = _section(
        ExpectSeries,
        {
            "series_number": _Field(_integer(minimum=-(2**31), maximum=2**31 - 1)),
            "modality": _Field(_check_string),
            "instances": _Field(_integer(0, 1_000_000)),
        },
    )(node, path, ctx)
    if item is INVALID:
        return INVALID
    assert isinstance(item, ExpectSeries)
    if item.series_number is None and not item.modality:
        return ctx.error(node, path, "an expected series needs series_number, modality or both")
    return item


def _check_sinks(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept ``notify.sinks``: sink names, each once; recorded for :func:`check_sink_references`."""
    names = _list_of(_check_string, non_empty=True, empty_message="must name at least one sink")(node, path, ctx)
    if names is INVALID:
        return INVALID
    assert isinstance(node, yaml.SequenceNode)
    refs = getattr(ctx.shared, "sink_refs", None)
    if refs is None:
        refs = ctx.shared.sink_refs = []
    seen: set[str] = set()
    ok = True
    for index, (name, item_node) in enumerate(zip(names, node.value)):
        if name in seen:
            ctx.error(item_node, _item(path, index), f"sink {name!r} is already listed")
            ok = False
            continue
        seen.add(name)
        refs.append(_NameRef(ctx, item_node, _item(path, index), name))
    return tuple(names) if ok else INVALID


_NOTIFY_FIELDS: Final[Mapping[str, _Field]] = {
    "sinks": _Field(_check_sinks, required=True),
    "quiet_period": _Field(_duration(0, _MAX_WAIT_SECONDS)),
    "max_wait": _Field(_duration(0, _MAX_WAIT_SECONDS)),
    "expect_series": _Field(_list_of(_check_expect_series, non_empty=False)),
    "expect_count": _Field(_check_boolean),
}


def check_notify(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a route's ``notify`` section.

    :param node: The value node.
    :param path: Its key path (``routes[i].notify``).
    :param ctx: The load context.
    :returns: A :class:`NotifyConfig`, or :data:`INVALID`.
    """
    values = _check_fields(node, path, ctx, _NOTIFY_FIELDS)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    if "expect_series" in values:
        values["expect_series"] = tuple(values["expect_series"])
    config = NotifyConfig(**values)
    if config.max_wait < config.quiet_period:
        where = _value_node(node, "max_wait") or _value_node(node, "quiet_period") or node
        return ctx.error(
            where,
            _child(path, "max_wait"),
            f"max_wait ({config.max_wait:g}s) must not be shorter than quiet_period ({config.quiet_period:g}s)",
        )
    return config


def check_sink_references(ctx: _Context) -> None:
    """Once every file is read: ``notify.sinks`` names sinks, ``forward`` names no sink.

    :param ctx: The configuration file's context (its shared state holds what every file recorded).
    """
    shared = ctx.shared
    names = shared.destination_names
    if names is None:
        return
    sinks: set[str] = getattr(shared, "sink_names", None) or set()
    for ref in getattr(shared, "sink_refs", None) or ():
        if ref.name in sinks:
            continue
        if ref.name in names:
            ref.ctx.error(ref.node, ref.key_path,
                          f"{ref.name!r} is a destination, not a sink (webhook:, hl7: or fhir:); list it in forward")
            continue
        listed = ", ".join(sorted(sinks)) if sinks else "none"
        ref.ctx.error(ref.node, ref.key_path, f"unknown sink {ref.name!r}; configured sinks: {listed}")
    for ref in shared.forward_refs:
        if ref.name in sinks:
            ref.ctx.error(ref.node, ref.key_path,
                          f"{ref.name!r} is a notification sink; name it in the route's notify.sinks, not in forward")

