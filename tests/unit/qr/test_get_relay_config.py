"""``retrieve.route`` (issue 16): the route whose morph plan morphs relayed instances, checked at load."""

from __future__ import annotations

from gateway.config.schema import GatewayConfig
from gateway.morph import MorphPlan
from tests.unit.config.test_load import LoadTestCase
from tests.unit.config.test_qr import WITH_ARCHIVES

#: WITH_ARCHIVES (lines 1-11), one morphing route (12-16); what follows starts on line 17.
WITH_ROUTE = (
    WITH_ARCHIVES
    + "routes:\n"
    + "  - name: research\n"
    + "    forward: [out]\n"
    + "    morph:\n"
    + "      - set: {InstitutionName: Relayed}\n"
)


class RetrieveRouteTests(LoadTestCase):
    """The key is optional, names a route, and an unknown name is an error at its line."""

    def test_absent_is_as_received(self) -> None:
        """Without ``route`` nothing is morphed (the empty name)."""
        config = self.load(WITH_ROUTE + "retrieve: {sources: [archive1]}\n")
        assert isinstance(config, GatewayConfig) and config.retrieve is not None
        self.assertEqual(config.retrieve.route, "")

    def test_known_route_is_kept(self) -> None:
        """A route of ``routes`` is accepted; its compiled plan is the one the relay uses."""
        config = self.load(WITH_ROUTE + "retrieve: {sources: [archive1], route: research}\n")
        assert isinstance(config, GatewayConfig) and config.retrieve is not None
        self.assertEqual(config.retrieve.route, "research")
        route = next(r for r in config.routes if r.name == config.retrieve.route)
        self.assertIsInstance(route.morph, MorphPlan)

    def test_unknown_route_refused_with_line_and_key(self) -> None:
        """A misspelt route name is refused at the ``route`` key's line with a suggestion."""
        self.assertOneError(
            WITH_ROUTE + "retrieve:\n  sources: [archive1]\n  route: reserch\n",
            19,
            "retrieve.route",
            "unknown route 'reserch'",
        )

    def test_listener_route_checked_too(self) -> None:
        """A listener's own ``retrieve.route`` is checked the same way."""
        text = WITH_ROUTE.replace(
            "  - host: 127.0.0.1\n    port: 0\n",
            "  - host: 127.0.0.1\n    port: 0\n    retrieve: {sources: [archive1], route: nope}\n",
        )
        errors = self.errors(text)
        self.assertEqual([e.key_path for e in errors], ["listen[0].retrieve.route"])
        self.assertIn("unknown route 'nope'", errors[0].message)
