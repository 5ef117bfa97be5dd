"""Who may query and retrieve through the gateway, and which move destinations they may name (issue 16).

The association itself already passed the listener's access policy
(:mod:`gateway.access`: called and calling AE titles, networks, the TLS
certificate bound to the AE title, user identity), exactly as for C-STORE;
a Q/R request is then checked here, per request:

1. the verb is offered on the requester's listener: ``query`` applies there
   for C-FIND, ``retrieve`` for C-MOVE and C-GET
   (:meth:`GatewayConfig.query_for` / :meth:`GatewayConfig.retrieve_for`);
   normally negotiation already refused the SOP class (result 3), so this
   matters only after a reload that removed the section;
2. the calling AE title matches one of the section's ``allowed_ae_titles``
   globs (:func:`fnmatch.fnmatchcase`, case-sensitive, as
   ``accept.calling_ae_titles``), when it has any.

:func:`move_destination` then resolves a C-MOVE's Move Destination (PS3.7
9.1.3.1: an AE title) to an entry of the ``modalities`` table, within the
caller's ``retrieve.allowed_destinations``. A title that is not in the table,
or that this caller may not name, is answered 0xA801 "Refused: Move
Destination unknown" (PS3.4 C.4.2.1.5, Table C.4-2): to this caller it is
unknown, and the answer does not reveal which AEs exist; the reason (for the
log and the audit record) says which.

Pure functions of the configuration and the association: no I/O.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Final, Union

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig, ListenerConfig, ModalityConfig, QueryConfig, RetrieveConfig
    from gateway.receive import AssociationInfo

__all__ = ["MOVE_DESTINATION_UNKNOWN", "VERBS", "allowed", "listener_of", "move_destination"]

#: The Q/R verbs, as ``scp.py`` names them.
VERBS: Final = ("find", "move", "get")

#: PS3.4 C.4.2.1.5 (Table C.4-2): Refused: Move Destination unknown.
MOVE_DESTINATION_UNKNOWN: Final = 0xA801


def listener_of(config: "GatewayConfig", info: "AssociationInfo") -> "ListenerConfig | None":
    """The listener (``ListenerConfig``) the association came in on, by name; ``None`` if gone after a reload.

    :param config: The configuration in force (``GatewayConfig``).
    :param info: The association (:class:`gateway.receive.AssociationInfo`).
    """
    for listener in config.listen:
        if listener.name == info.listener:
            return listener
    return None


def _section(
    config: "GatewayConfig", info: "AssociationInfo", verb: str
) -> "tuple[Union[QueryConfig, RetrieveConfig, None], str]":
    """The ``query`` or ``retrieve`` section that applies to ``verb`` on the association's listener, and its key."""
    if verb not in VERBS:
        raise ValueError(f"unknown Q/R verb {verb!r}")
    key = "query" if verb == "find" else "retrieve"
    listener = listener_of(config, info)
    if listener is None:
        return getattr(config, key), key
    return (config.query_for(listener) if key == "query" else config.retrieve_for(listener)), key


def allowed(config: "GatewayConfig", info: "AssociationInfo", verb: str) -> tuple[bool, str]:
    """May this association's requester ``verb`` (``find``, ``move``, ``get``)?

    :param config: The configuration in force (``GatewayConfig``).
    :param info: The association (:class:`gateway.receive.AssociationInfo`): its
        listener and calling AE title.
    :param verb: One of :data:`VERBS`.
    :returns: ``(True, "")``, or ``(False, reason)`` with a reason for the log,
        the audit record and an Error Comment (no peer data in it beyond what
        the log already escapes).
    """
    section, key = _section(config, info, verb)
    if section is None:
        return False, f"{key} is not offered on listener {info.listener}"
    patterns = getattr(section, "allowed_ae_titles", ())
    if patterns and not any(fnmatchcase(info.calling_ae_title.strip(), pattern) for pattern in patterns):
        return False, f"calling AE title not in {key}.allowed_ae_titles"
    return True, ""


def move_destination(config: "GatewayConfig", info: "AssociationInfo", ae_title: str) -> "tuple[ModalityConfig | None, str]":
    """Resolve a C-MOVE's Move Destination AE title to a ``modalities`` entry the caller may name.

    :param config: The configuration in force (``GatewayConfig``).
    :param info: The association (its listener decides which ``retrieve`` applies).
    :param ae_title: The Move Destination (0000,0600), spaces not significant (PS3.5 6.2).
    :returns: ``(ModalityConfig, "")``; or ``(None, reason)``, to be answered
        :data:`MOVE_DESTINATION_UNKNOWN` with the reason logged and audited.
    """
    title = ae_title.strip(" ")
    modality = next((m for m in config.modalities if m.ae_title == title), None)
    if modality is None:
        return None, "move destination is not in the modalities table"
    section, _ = _section(config, info, "move")
    if section is None:
        return None, f"retrieve is not offered on listener {info.listener}"
    patterns: tuple[str, ...] = getattr(section, "allowed_destinations", ())
    if patterns and not any(fnmatchcase(modality.name, pattern) for pattern in patterns):
        return None, f"modalities.{modality.name} is not in retrieve.allowed_destinations"
    return modality, ""
