"""The ``transfer_syntax`` and ``lossy`` keys of a destination (DICOM and DICOMweb; issue 17).

Both destination loaders add :data:`TRANSFER_SYNTAX_FIELDS` to their field
table and call :func:`policy_of` on the checked values, which refuses a lossy
target without ``lossy: true`` (PS3.3 C.7.6.1.1.5: a lossy copy is a new,
derived instance; the operator must ask for it explicitly).
"""

from __future__ import annotations

from typing import Any, Final, Mapping

import yaml

from gateway.codecs import LOSSY_TARGETS, PRESERVE, TARGETS, TransferSyntaxPolicy
from gateway.config.nodes import INVALID, _Context, _Field, _check_boolean, _one_of, _Invalid

__all__ = ["TRANSFER_SYNTAX_FIELDS", "policy_of"]

#: Field-table entries for a destination's section.
TRANSFER_SYNTAX_FIELDS: Final[Mapping[str, _Field]] = {
    "transfer_syntax": _Field(_one_of(TARGETS)),
    "lossy": _Field(_check_boolean),
}


def policy_of(values: Mapping[str, Any], node: yaml.Node, path: str, ctx: _Context) -> TransferSyntaxPolicy | _Invalid:
    """The policy from a destination's checked values (the keys of :data:`TRANSFER_SYNTAX_FIELDS`).

    :param values: the checked values of the destination's section (missing keys: defaults).
    :param node: the destination's mapping node (for the error's line).
    :param path: its key path, e.g. ``destinations.cloud``.
    :param ctx: the load context.
    :returns: the policy, or :data:`INVALID` after reporting a lossy target without ``lossy: true``.
    """
    target = values.get("transfer_syntax", PRESERVE.target)
    lossy = values.get("lossy", False)
    if target is INVALID or lossy is INVALID:
        return INVALID
    if target in LOSSY_TARGETS and not lossy:
        return ctx.error(node, f"{path}.transfer_syntax",
                         f"{target!r} is lossy: set lossy: true to allow it (the copy becomes a new,"
                         " derived instance, PS3.3 C.7.6.1.1.5)")
    return TransferSyntaxPolicy(target, bool(lossy))
