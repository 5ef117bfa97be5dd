"""Routing: which destinations an instance goes to, decided from its header and association.

``evaluate`` is pure: given the instance's header (a pydicom data set read
without pixel data; ``None`` when no route needs it), the association context,
the configured routes and the names of the configured destinations, it
returns a :class:`RoutingDecision`. The receive side journals one queue
entry per (route, destination) of the decision *before* answering the
modality (HARDENING decision 4), so routing is part of the custody promise.

How routes combine (issue 4):

* every route whose ``match`` holds is applied, in order (fan-out across
  routes); a route without ``match`` matches every instance;
* ``final: true`` stops evaluation after that route;
* ``reject: <status>`` answers the modality with that C-STORE failure
  status at once: nothing is forwarded, nothing is kept (the modality keeps
  its copy);
* ``drop: true`` discards explicitly and stops evaluation: the instance is
  acknowledged and not kept, unless an earlier route already forwards it;
* a ``forward`` entry may be a template (``"{calling_ae_title}-archive"``,
  ``"{Modality}"``): rendered per instance, and a result that names no
  configured destination is a routing error, counted and logged, never a
  silent drop (if no destination is left, the instance is kept as unrouted);
* an instance that no route takes is kept in the spool's ``unrouted/`` area.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Protocol, Sequence


class Route(Protocol):
    """What routing reads of a route (:class:`gateway.config.schema.RouteConfig` is one).

    A structural type, so the rules do not depend on the configuration
    package: any object with these attributes routes.
    """

    @property
    def name(self) -> str:
        """The route's name."""

    @property
    def match(self) -> Any:
        """The compiled predicate (:class:`gateway.match.Predicate`), or None for every instance."""

    @property
    def forward(self) -> Sequence[str]:
        """Destination names or templates."""

    @property
    def reject(self) -> int | None:
        """The C-STORE status to answer instead, or None."""

    @property
    def drop(self) -> bool:
        """Discard the instance."""

    @property
    def final(self) -> bool:
        """Stop after this route."""


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
    #: How the instance came in: ``dimse`` (C-STORE), ``dicomweb`` (STOW-RS, issue 17) or ``retrieve``.
    origin: str = "dimse"


@dataclass(frozen=True)
class RoutingDecision:
    """The outcome of routing one instance.

    :ivar entries: ``(route name, destination name)`` pairs, in route order,
        each destination at most once per route.
    :ivar unrouted: true when no route forwards it (and it was neither
        rejected nor dropped): it is kept in ``unrouted/``.
    :ivar matched: the names of the routes whose condition held.
    :ivar reject: the C-STORE status to answer instead of success, or None.
    :ivar reject_route: the route that rejected.
    :ivar dropped: a ``drop`` route discarded it (and no route forwards it).
    :ivar errors: routing errors (a forward template naming no destination).
    """

    entries: tuple[tuple[str, str], ...]
    unrouted: bool
    matched: tuple[str, ...] = ()
    reject: int | None = None
    reject_route: str = ""
    dropped: bool = False
    errors: tuple[str, ...] = ()


def needs_header(routes: Sequence[Route]) -> bool:
    """Whether evaluating ``routes`` needs the instance's header (a condition or a templated forward)."""
    return any(route.match is not None or any("{" in target for target in route.forward) for route in routes)


def _targets(route: Route, dataset: Any, context: RoutingContext, errors: list[str], known: Collection[str]) -> list[str]:
    from gateway.template import Template

    names: list[str] = []
    for target in route.forward:
        if "{" not in target:
            names.append(target)
            continue
        try:
            name = Template.parse(target).render(dataset, context).strip()
        except Exception as e:  # a template that cannot render for this instance
            errors.append(f"route {route.name}: forward template {target!r} failed: {e}")
            continue
        if name not in known:
            errors.append(f"route {route.name}: forward template {target!r} gave {name!r}, which is no configured destination")
            continue
        names.append(name)
    return names


def evaluate(
    dataset: Any,
    context: RoutingContext,
    routes: Sequence[Route],
    destinations: Collection[str] = (),
) -> RoutingDecision:
    """Apply the routes to one instance.

    :param dataset: the instance's header (pydicom Dataset, no pixel data), or
        ``None`` when :func:`needs_header` is false for ``routes``.
    :param context: the association it arrived on.
    :param routes: the configured routes, in order.
    :param destinations: the configured destination names (templated forwards are checked against them).
    :returns: the decision.
    """
    entries: list[tuple[str, str]] = []
    matched: list[str] = []
    errors: list[str] = []
    dropped = False
    for route in routes:
        if route.match is not None and not route.match.matches(dataset, context):
            continue
        matched.append(route.name)
        if route.reject is not None:
            return RoutingDecision(entries=(), unrouted=False, matched=tuple(matched), reject=route.reject, reject_route=route.name)
        if route.drop:
            dropped = True
            break
        seen: set[str] = set()
        for destination in _targets(route, dataset, context, errors, destinations):
            if destination not in seen:
                seen.add(destination)
                entries.append((route.name, destination))
        if route.final:
            break
    return RoutingDecision(
        entries=tuple(entries),
        unrouted=not entries and not dropped,
        matched=tuple(matched),
        dropped=dropped and not entries,
        errors=tuple(errors),
    )
