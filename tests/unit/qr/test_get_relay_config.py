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


class RetrieveByTests(LoadTestCase):
    """``destinations.X.retrieve_by``: how a C-GET retrieves from that archive."""

    def test_default_is_auto(self) -> None:
        """Without the key: ``auto`` (the source's C-GET, else a C-MOVE to the gateway)."""
        config = self.load(WITH_ARCHIVES)
        assert isinstance(config, GatewayConfig)
        self.assertEqual(config.destination("archive1").retrieve_by, "auto")

    def test_move_is_read(self) -> None:
        """``retrieve_by: move`` reaches the destination."""
        config = self.load(WITH_ARCHIVES.replace("port: 104}\n  archive2", "port: 104, retrieve_by: move}\n  archive2"))
        assert isinstance(config, GatewayConfig)
        self.assertEqual(config.destination("archive1").retrieve_by, "move")

    def test_unknown_value_refused_with_line_and_key(self) -> None:
        """Anything but auto, get or move is refused at its line."""
        errors = self.errors(WITH_ARCHIVES.replace("port: 104}\n  archive2", "port: 104, retrieve_by: both}\n  archive2"))
        self.assertEqual([(e.line, e.key_path) for e in errors], [(7, "destinations.archive1.retrieve_by")])


class SourceForTests(LoadTestCase):
    """:func:`gateway.qr.get.source_for` picks the adapter ``retrieve_by`` names."""

    def test_each_setting(self) -> None:
        """get: the source's C-GET only; move: the relay only; auto: C-GET with the relay as fallback."""
        from gateway.qr import get

        direct, relay = object(), object()
        self.assertIs(get.source_for("get", lambda: direct, lambda: relay), direct)  # type: ignore[arg-type,return-value]
        self.assertIs(get.source_for("move", lambda: direct, lambda: relay), relay)  # type: ignore[arg-type,return-value]

        class Named:
            name = "a"

        auto = get.source_for("auto", Named, lambda: relay)  # type: ignore[arg-type,return-value]
        self.assertIsInstance(auto, get.GetOrMoveSource)
