"""Configuration section ``commitment`` (top level and ``listen[i].commitment``; issue 15).

The Storage Commitment SCP (PS3.4 Annex J, Push Model): what "committed"
means in the reports the gateway sends (``policy``), how long a report may
wait for the truth (``deadline``) and for its delivery (``report_deadline``),
how far back received instances are looked for (``lookback``), who may ask
(``allowed_ae_titles``, within the ``modalities`` table, see
:mod:`gateway.config.modalities`), and how reports are sent and retried.

A listener's own ``commitment`` replaces the top-level one as a whole (no
key-by-key merge: the policy and its deadlines are read together).

The cross-checks that need the whole file (a ``commitment`` section with an
empty ``modalities`` table) are in :func:`check_commitment_requesters`,
called by :mod:`gateway.config.load`; what is allowed but worth a word
(``committed`` with no destination that commits) is in
:func:`commitment_warnings`, printed by ``dicom-gateway check``.

Checkers built with the toolkit of :mod:`gateway.config.nodes`; this module
imports no other section, so :mod:`gateway.config.listeners` can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Final

import yaml

from gateway.config.schema import (
    COMMITMENT_POLICIES,
    COMMITMENT_REPORT_ASSOCIATIONS,
    COMMITMENT_UNROUTED,
    CommitmentConfig,
    DicomDestination,
    GatewayConfig,
    ListenerConfig,
)
from gateway.config.nodes import (
    INVALID,
    _Context,
    _Field,
    _check_ae_pattern,
    _check_fields,
    _child,
    _duration,
    _item,
    _list_of,
    _one_of,
    _section,
    _value_node,
)

__all__ = ["DEFAULT_DEADLINES", "DEFAULT_REPORT_DEADLINE", "commitment_warnings"]

#: ``commitment.deadline`` when the file gives none, by policy: an hour for
#: ``received`` and ``delivered``, a day for ``committed`` (an archive may
#: take its time to commit).
DEFAULT_DEADLINES: Final[Mapping[str, float]] = {
    "received": 3600.0,
    "delivered": 3600.0,
    "committed": 86400.0,
}

#: ``commitment.report_deadline`` when the file gives none: a day, or
#: :data:`DELIVERY_WINDOW` after the deadline when that is later (policy
#: ``committed``'s day-long deadline), so a report decided at its deadline
#: still has time to be delivered before it is given up.
DEFAULT_REPORT_DEADLINE: Final = 86400.0

#: The least time the default report deadline leaves after the deadline.
DELIVERY_WINDOW: Final = 3600.0

# The longest values accepted: longer is a typo (ms vs s, d vs h).
_MAX_DEADLINE: Final = 30 * 86400.0
_MAX_REPORT_DEADLINE: Final = 365 * 86400.0
_MAX_LOOKBACK: Final = 3650 * 86400.0
_MAX_RETRY: Final = 86400.0


def _retry(initial: float = 10.0, max: float = 600.0) -> tuple[float, float]:  # noqa: A002 - the YAML key
    """``commitment.retry`` as ``(initial, max)``."""
    return initial, max


_RETRY_FIELDS: Final[Mapping[str, _Field]] = {
    "initial": _Field(_duration(0, _MAX_RETRY)),
    "max": _Field(_duration(0, _MAX_RETRY)),
}

_COMMITMENT_FIELDS: Final[Mapping[str, _Field]] = {
    "policy": _Field(_one_of(COMMITMENT_POLICIES)),
    "deadline": _Field(_duration(0, _MAX_DEADLINE)),
    "report_deadline": _Field(_duration(0, _MAX_REPORT_DEADLINE)),
    "lookback": _Field(_duration(0, _MAX_LOOKBACK)),
    # Globs over the requester's calling AE title, as accept.calling_ae_titles.
    "allowed_ae_titles": _Field(_list_of(_check_ae_pattern, non_empty=False)),
    "unrouted": _Field(_one_of(COMMITMENT_UNROUTED)),
    "report_association": _Field(_one_of(COMMITMENT_REPORT_ASSOCIATIONS)),
    "retry": _Field(_section(_retry, _RETRY_FIELDS)),
}


def check_commitment(node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Accept a ``commitment`` section (top level or a listener's).

    ``deadline`` defaults by policy (:data:`DEFAULT_DEADLINES`),
    ``report_deadline`` to :data:`DEFAULT_REPORT_DEADLINE` or
    :data:`DELIVERY_WINDOW` after the deadline, whichever is later; a report
    deadline given in the file may not come before the deadline (a report
    would be given up before it is even decided), and the first retry delay
    may not exceed the largest. A null section (every key commented out)
    means the defaults.

    :param node: The value node.
    :param path: Its key path.
    :param ctx: The load context.
    :returns: A :class:`CommitmentConfig`, or :data:`INVALID`.
    """
    values = _check_fields(node, path, ctx, _COMMITMENT_FIELDS, null_is_empty=True)
    if values is INVALID:
        return INVALID
    assert isinstance(values, dict)
    policy: str = values.get("policy", CommitmentConfig.policy)
    deadline: float = values.get("deadline", DEFAULT_DEADLINES[policy])
    report_deadline: float = values.get("report_deadline", max(DEFAULT_REPORT_DEADLINE, deadline + DELIVERY_WINDOW))
    retry_initial, retry_max = values.get("retry", _retry())
    ok = True
    if report_deadline < deadline:
        # Only a report deadline the file gives can be early (the default follows the deadline).
        ok = False
        ctx.error(
            _value_node(node, "report_deadline"),
            _child(path, "report_deadline"),
            f"report_deadline ({report_deadline:g}s) must be at least "
            f"deadline ({deadline:g}s{'' if 'deadline' in values else f', the default for {policy}'}): "
            "a report is decided at the deadline at the latest and given up at the report deadline",
        )
    if retry_initial > retry_max:
        retry_node = _value_node(node, "retry")
        key = "initial" if retry_node is not None and _value_node(retry_node, "initial") is not None else "max"
        ok = False
        ctx.error(
            _value_node(retry_node, key) if retry_node is not None else node,
            _child(_child(path, "retry"), key),
            f"retry.initial ({retry_initial:g}s) must not exceed retry.max ({retry_max:g}s)",
        )
    if not ok:
        return INVALID
    return CommitmentConfig(
        policy=policy,
        deadline=deadline,
        report_deadline=report_deadline,
        lookback=values.get("lookback", CommitmentConfig.lookback),
        allowed_ae_titles=values.get("allowed_ae_titles", ()),
        unrouted=values.get("unrouted", CommitmentConfig.unrouted),
        report_association=values.get("report_association", CommitmentConfig.report_association),
        retry_initial=retry_initial,
        retry_max=retry_max,
    )


def check_commitment_requesters(root: yaml.Node, values: Mapping[str, Any], ctx: _Context) -> None:
    """Refuse a ``commitment`` section (anywhere) when the ``modalities`` table is empty.

    The report goes to the requester's address, which only the table gives
    (PS3.4 J.3.3: a new association from the SCP); with no entry no
    requester could ever be answered, so every N-ACTION would be refused.

    :param root: The document's root mapping.
    :param values: The checked top-level values.
    :param ctx: The load context.
    """
    if values.get("modalities"):
        return
    message = (
        "Storage Commitment needs a 'modalities' table: the report goes to the requester's "
        "address there (PS3.4 J.3.3), so with no entry no request could be answered"
    )
    if values.get("commitment") is not None:
        ctx.error(_value_node(root, "commitment"), "commitment", message)
    listen_node = _value_node(root, "listen")
    for index, listener in enumerate(values.get("listen", ())):
        if isinstance(listener, ListenerConfig) and listener.commitment is not None:
            item_node = listen_node.value[index] if isinstance(listen_node, yaml.SequenceNode) else None
            where = _value_node(item_node, "commitment") if item_node is not None else None
            ctx.error(where, _child(_item("listen", index), "commitment"), message)


def commitment_warnings(config: GatewayConfig) -> list[str]:
    """What a valid configuration allows but an operator should hear about (``dicom-gateway check``).

    * ``report_deadline`` equal to ``deadline``: a report decided at the
      deadline would be given up without a delivery attempt;
    * policy ``committed`` with no ``storage_commitment: true`` destination:
      it then means ``delivered`` (no archive is asked);
    * an ``allowed_ae_titles`` pattern that matches no AE title of the
      ``modalities`` table: it allows nobody (only the table's AEs can be
      answered).

    :param config: The loaded configuration.
    :returns: One line per warning, each starting with its key path.
    """
    sections: list[tuple[str, CommitmentConfig]] = []
    if config.commitment is not None:
        sections.append(("commitment", config.commitment))
    for index, listener in enumerate(config.listen):
        if listener.commitment is not None:
            sections.append((_child(_item("listen", index), "commitment"), listener.commitment))
    committing = [
        d.name for d in config.destinations if isinstance(d, DicomDestination) and d.storage_commitment
    ]
    titles = [m.ae_title for m in config.modalities]
    warnings: list[str] = []
    for path, section in sections:
        if section.report_deadline == section.deadline:
            warnings.append(
                f"{path}.report_deadline: equal to the deadline ({section.deadline:g}s): a report decided at "
                "its deadline is given up at once, without a delivery attempt"
            )
        if section.policy == "committed" and not committing:
            warnings.append(
                f"{path}.policy: 'committed' but no destination has storage_commitment: true; "
                "it means 'delivered' (every destination acknowledged)"
            )
        for pattern in section.allowed_ae_titles:
            if not any(fnmatchcase(title, pattern) for title in titles):
                warnings.append(
                    f"{path}.allowed_ae_titles: {pattern!r} matches no AE title of the modalities table; "
                    "it allows nobody"
                )
    return warnings
