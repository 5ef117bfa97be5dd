"""Configuration section ``modalities``: the remote AEs the gateway may call back (issue 15).

``modalities: {NAME: {ae_title, host, port, tls, connect_timeout,
acse_timeout, dimse_timeout, max_pdu_length}}``. Storage Commitment reports
go to a requester's entry (PS3.4 J.3.3: on a new association the SCP opens),
so only AEs of this table can ask; the query/retrieve work uses the same
table for move destinations. Names follow the destination names' rules
(they label logs and are command arguments); an AE title appears once (a
requester is found by its calling AE title); ``tls`` is exactly a DICOM
destination's.

Checkers built with the toolkit of :mod:`gateway.config.nodes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import yaml

from gateway.config.schema import ModalityConfig
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _check_ae_title,
    _check_fields,
    _check_string,
    _child,
    _duration,
    _integer,
    _is_null,
    _mapping_entries,
    _value_node,
)
from gateway.config.destinations import _DICOM_FIELDS, _NAME_PATTERN
from gateway.config.listeners import _MAX_TIMER_SECONDS

__all__: list[str] = []

_MODALITY_FIELDS: Final[Mapping[str, _Field]] = {
    "ae_title": _Field(_check_ae_title, required=True),
    "host": _Field(_check_string, required=True),
    "port": _Field(_integer(1, 65535), required=True),
    # The same checker as a DICOM destination's tls (PS3.15 Annex B).
    "tls": _DICOM_FIELDS["tls"],
    "connect_timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    # The ARTIM timer of a requestor (PS3.8 9.1.5).
    "acse_timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    "dimse_timeout": _Field(_duration(0, _MAX_TIMER_SECONDS)),
    # As for the listeners and destinations (PS3.8 D.1).
    "max_pdu_length": _Field(_integer(4096, 16777216)),
}


def check_modalities(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept the ``modalities`` mapping of names to remote AEs.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A tuple of :class:`ModalityConfig` in file order, or :data:`INVALID`.
    """
    if _is_null(node):
        return ()
    entries = _mapping_entries(node, path, ctx)
    if entries is INVALID:
        return INVALID
    assert isinstance(entries, dict)
    modalities: list[Any] = []
    titles: dict[str, str] = {}
    for name, (key_node, value_node) in entries.items():
        entry_path = _child(path, name)
        if not _NAME_PATTERN.fullmatch(name):
            ctx.error(
                key_node,
                entry_path,
                f"invalid modality name {name!r}: use 1 to 64 letters, digits, "
                "'_', '.' or '-', not starting with '.' or '-' (names label logs "
                "and are command arguments)",
            )
            modalities.append(INVALID)
            continue
        values = _check_fields(value_node, entry_path, ctx, _MODALITY_FIELDS)
        if values is INVALID:
            modalities.append(INVALID)
            continue
        assert isinstance(values, dict)
        title = values["ae_title"]
        if title in titles:
            ctx.error(
                _value_node(value_node, "ae_title"),
                _child(entry_path, "ae_title"),
                f"AE title {title!r} is already that of modalities.{titles[title]}: "
                "a requester is found by its AE title, so each may appear once",
            )
            modalities.append(INVALID)
            continue
        titles[title] = name
        modalities.append(ModalityConfig(name=name, **values))
    if any(modality is INVALID for modality in modalities):
        return INVALID
    return tuple(modalities)
