"""Routing: which destinations an instance goes to, decided from its header and association.

``evaluate`` is pure: given what the spool's structure walk found (the
:class:`~gateway.validate.DatasetSummary`), the association context and the
configured routes, it returns a :class:`RoutingDecision`. The receive side
journals one queue entry per (route, destination) of the decision *before*
answering the modality (HARDENING decision 4), so a route's outcome is part
of the custody promise.

At this stage a route has a name and a ``forward`` list and matches every
instance; the rules issue adds ``match``, ``morph``, ``final``, ``drop`` and
``reject`` to the same structures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from gateway.config.schema import RouteConfig
from gateway.validate import DatasetSummary


@dataclass(frozen=True)
class RoutingContext:
    """The association an instance arrived on (what routes may look at besides the header).

    :ivar source_address: the peer's IP address (no port).
    :ivar listener: the listener's name; ``listener_port`` its port.
    :ivar tls_subject: the peer certificate's subject (RFC 4514 string) on a
        TLS listener, empty otherwise.
    :ivar received_at: wall-clock time the instance was received (for
        time-of-day and weekday windows, evaluated in local time).
    """

    calling_ae_title: str
    called_ae_title: str
    source_address: str
    listener: str
    listener_port: int = 0
    tls_subject: str = ""
    received_at: float = 0.0


@dataclass(frozen=True)
class RoutingDecision:
    """The outcome of routing one instance.

    :ivar entries: ``(route name, destination name)`` pairs, in route order,
        each destination at most once per route.
    :ivar unrouted: true when no route matched: the instance is kept in the
        spool's ``unrouted/`` area, logged and counted, never dropped silently.
    """

    entries: tuple[tuple[str, str], ...]
    unrouted: bool


def evaluate(summary: DatasetSummary, context: RoutingContext, routes: Sequence[RouteConfig]) -> RoutingDecision:
    """Apply every route whose condition holds (fan-out across routes).

    :param summary: the header fields of the instance.
    :param context: the association it arrived on.
    :param routes: the configured routes, in order.
    :returns: the decision.
    """
    entries: list[tuple[str, str]] = []
    for route in routes:
        seen: set[str] = set()
        for destination in route.forward:
            if destination not in seen:
                seen.add(destination)
                entries.append((route.name, destination))
    return RoutingDecision(entries=tuple(entries), unrouted=not entries)
