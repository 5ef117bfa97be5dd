"""Tests for the Query/Retrieve keys of the configuration (issue 16).

``query`` and ``retrieve`` (top level and ``listen[i]``), their cross-checks
(sources are DICOM destinations, literal ``allowed_destinations`` are
modalities) and the warnings ``dicom-gateway check`` prints
(:func:`qr_warnings`). As in ``test_load``, each error test checks the file,
the 1-based line and the key path an operator will see.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.qr import qr_warnings
from gateway.config.schema import GatewayConfig, QueryConfig, RetrieveConfig
from gateway.morph import MorphPlan
from tests.unit.config.test_load import MINIMAL, LoadTestCase

#: MINIMAL (lines 1-5), two DICOM archives and a folder (lines 6-9), one modality (10-11);
#: what follows starts on line 12.
WITH_ARCHIVES = (
    MINIMAL
    + "destinations:\n"
    + "  archive1: {ae_title: ARC1, host: 10.0.0.1, port: 104}\n"
    + "  archive2: {ae_title: ARC2, host: 10.0.0.2, port: 104}\n"
    + "  out: {folder: /data/out}\n"
    + "modalities:\n"
    + "  ws1: {ae_title: WS1, host: 10.0.0.9, port: 104}\n"
)


class QuerySectionTests(LoadTestCase):
    """``query``: sources, mode, timeout, strict, max_results, the morphs."""

    def test_absent_means_not_offered(self) -> None:
        """Without the sections the Q/R SOP classes are not offered anywhere."""
        config = self.load(WITH_ARCHIVES)
        assert isinstance(config, GatewayConfig)
        self.assertEqual((config.query, config.retrieve), (None, None))
        self.assertIsNone(config.query_for(config.listen[0]))

    def test_defaults(self) -> None:
        """Only ``sources`` is required; the rest are the documented defaults."""
        config = self.load(WITH_ARCHIVES + "query: {sources: [archive1]}\n")
        assert isinstance(config, GatewayConfig)
        self.assertEqual(config.query, QueryConfig(sources=("archive1",)))
        self.assertEqual((config.query.mode, config.query.timeout, config.query.max_results), ("merge", 30.0, 10000))

    def test_every_key_is_read(self) -> None:
        """Each key reaches :class:`QueryConfig`, converted; the morphs are compiled plans."""
        config = self.load(
            WITH_ARCHIVES
            + "query:\n"
            + "  sources: [archive2, archive1]\n"
            + "  mode: first\n"
            + "  timeout: 1m\n"
            + "  strict: true\n"
            + "  max_results: 500\n"
            + "  query_morph:\n"
            + "    - uid_remap: {salt: s}\n"
            + "  response_morph:\n"
            + "    - set: {InstitutionName: Research}\n"
            + "    - uid_remap: {salt: s}\n"
            + "  allowed_ae_titles: [WS*]\n"
        )
        assert isinstance(config, GatewayConfig)
        query = config.query
        assert query is not None
        self.assertEqual(
            (query.sources, query.mode, query.timeout, query.strict, query.max_results, query.allowed_ae_titles),
            (("archive2", "archive1"), "first", 60.0, True, 500, ("WS*",)),
        )
        self.assertIsInstance(query.query_morph, MorphPlan)
        self.assertIsInstance(query.response_morph, MorphPlan)
        self.assertEqual(len(query.response_morph.actions), 2)

    def test_sources_required(self) -> None:
        """A section with no ``sources`` is refused at its line."""
        self.assertOneError(WITH_ARCHIVES + "query: {mode: merge}\n", 12, "query.sources", "required key is missing")

    def test_empty_sources_refused(self) -> None:
        """An empty list asks nobody: refused."""
        self.assertOneError(WITH_ARCHIVES + "query: {sources: []}\n", 12, "query.sources", "at least one DICOM destination")

    def test_source_listed_twice_refused(self) -> None:
        """A source listed twice is refused at the second mention."""
        self.assertOneError(
            WITH_ARCHIVES + "query:\n  sources:\n    - archive1\n    - archive1\n",
            15,
            "query.sources[1]",
            "listed twice",
        )

    def test_unknown_source_refused(self) -> None:
        """A source that is no destination is refused with a suggestion."""
        error = self.assertOneError(
            WITH_ARCHIVES + "query:\n  sources:\n    - archive1\n    - archive3\n",
            15,
            "query.sources[1]",
            "unknown destination 'archive3'",
        )
        self.assertIn("archive", error.message)

    def test_folder_source_refused(self) -> None:
        """A folder destination cannot answer a C-FIND."""
        self.assertOneError(
            WITH_ARCHIVES + "query: {sources: [out]}\n", 12, "query.sources[0]", "not a DICOM destination"
        )

    def test_bad_mode_refused(self) -> None:
        """``mode`` is ``merge`` or ``first``."""
        self.assertOneError(
            WITH_ARCHIVES + "query:\n  sources: [archive1]\n  mode: union\n", 14, "query.mode", "must be one of merge, first"
        )

    def test_timeout_bounds(self) -> None:
        """A zero or over-an-hour timeout is refused (typos of units)."""
        self.assertOneError(WITH_ARCHIVES + "query: {sources: [archive1], timeout: 0s}\n", 12, "query.timeout", "more than 0")
        self.assertOneError(WITH_ARCHIVES + "query: {sources: [archive1], timeout: 2h}\n", 12, "query.timeout", "at most 3600")

    def test_relational_is_a_boolean_off_by_default(self) -> None:
        """``relational`` is false unless set; a non-boolean is refused at its line and key."""
        config = self.load(WITH_ARCHIVES + "query: {sources: [archive1]}\n")
        assert isinstance(config, GatewayConfig) and config.query is not None
        self.assertFalse(config.query.relational)
        config = self.load(WITH_ARCHIVES + "query:\n  sources: [archive1]\n  relational: true\n")
        assert isinstance(config, GatewayConfig) and config.query is not None
        self.assertTrue(config.query.relational)
        self.assertOneError(
            WITH_ARCHIVES + "query:\n  sources: [archive1]\n  relational: sometimes\n", 14, "query.relational", ""
        )

    def test_max_results_bounds(self) -> None:
        """``max_results`` is 1 to 1000000."""
        self.assertOneError(WITH_ARCHIVES + "query: {sources: [archive1], max_results: 0}\n", 12, "query.max_results", "")
        self.assertOneError(
            WITH_ARCHIVES + "query: {sources: [archive1], max_results: 5000000}\n", 12, "query.max_results", ""
        )

    def test_bad_morph_refused_with_its_key(self) -> None:
        """A morph error is reported with the morph's key path, by the route morph compiler."""
        errors = self.errors(
            WITH_ARCHIVES + "query:\n  sources: [archive1]\n  response_morph:\n    - explode: {x: 1}\n"
        )
        self.assertEqual(len(errors), 1, "\n".join(map(str, errors)))
        self.assertEqual(errors[0].line, 15)
        self.assertIn("query.response_morph[0]", errors[0].key_path)
        self.assertIn("unknown morph action", errors[0].message)

    def test_morph_not_a_list_refused(self) -> None:
        """A morph given as a mapping is refused."""
        self.assertOneError(
            WITH_ARCHIVES + "query:\n  sources: [archive1]\n  query_morph: {set: {A: b}}\n",
            14,
            "query.query_morph",
            "a list of morph actions",
        )

    def test_unknown_key_suggests(self) -> None:
        """A typo is refused with the nearest key."""
        error = self.assertOneError(
            WITH_ARCHIVES + "query:\n  sources: [archive1]\n  max_result: 5\n", 14, "query.max_result", "unknown key"
        )
        self.assertIn("max_results", error.message)

    def test_listener_overrides(self) -> None:
        """``listen[i].query`` replaces the top-level section as a whole on that listener."""
        config = self.load(
            WITH_ARCHIVES.replace("    port: 0\n", "    port: 0\n    query: {sources: [archive2], mode: first}\n")
            + "query: {sources: [archive1], strict: true}\n"
        )
        assert isinstance(config, GatewayConfig)
        own = config.query_for(config.listen[0])
        self.assertEqual(own, QueryConfig(sources=("archive2",), mode="first"))

    def test_listener_unknown_source_located(self) -> None:
        """A listener's bad source is reported under ``listen[0].query.sources``."""
        self.assertOneError(
            WITH_ARCHIVES.replace("    port: 0\n", "    port: 0\n    query: {sources: [nope]}\n"),
            5,
            "listen[0].query.sources[0]",
            "unknown destination 'nope'",
        )


class RetrieveSectionTests(LoadTestCase):
    """``retrieve``: sources, mode, allowed_destinations, timeout."""

    def test_defaults(self) -> None:
        """Only ``sources`` is required; ``relay`` is the default mode."""
        config = self.load(WITH_ARCHIVES + "retrieve: {sources: [archive1]}\n")
        assert isinstance(config, GatewayConfig)
        self.assertEqual(config.retrieve, RetrieveConfig(sources=("archive1",)))
        self.assertEqual(config.retrieve.mode, "relay")

    def test_every_key_is_read(self) -> None:
        """Each key reaches :class:`RetrieveConfig`."""
        config = self.load(
            WITH_ARCHIVES
            + "retrieve:\n  sources: [archive1, archive2]\n  mode: pass_through\n"
            + "  allowed_destinations: [ws1, 'ws*']\n  timeout: 30m\n  allowed_ae_titles: ['WS?']\n"
        )
        assert isinstance(config, GatewayConfig)
        self.assertEqual(
            config.retrieve,
            RetrieveConfig(
                sources=("archive1", "archive2"),
                mode="pass_through",
                allowed_destinations=("ws1", "ws*"),
                timeout=1800.0,
                allowed_ae_titles=("WS?",),
            ),
        )

    def test_bad_mode_refused(self) -> None:
        """``mode`` is ``relay`` or ``pass_through``."""
        self.assertOneError(
            WITH_ARCHIVES + "retrieve: {sources: [archive1], mode: direct}\n", 12, "retrieve.mode", "relay, pass_through"
        )

    def test_unknown_literal_destination_refused(self) -> None:
        """A literal ``allowed_destinations`` entry must be a modalities name."""
        error = self.assertOneError(
            WITH_ARCHIVES + "retrieve:\n  sources: [archive1]\n  allowed_destinations:\n    - ws2\n",
            15,
            "retrieve.allowed_destinations[0]",
            "not an entry of the modalities table",
        )
        self.assertIn("ws1", error.message)

    def test_bad_glob_refused(self) -> None:
        """A pattern with characters no name has is refused."""
        self.assertOneError(
            WITH_ARCHIVES + "retrieve: {sources: [archive1], allowed_destinations: ['ws 1']}\n",
            12,
            "retrieve.allowed_destinations[0]",
            "not a glob over modality names",
        )

    def test_bad_ae_pattern_refused(self) -> None:
        """``allowed_ae_titles`` holds AE title globs (PS3.5 VR AE characters)."""
        self.assertOneError(
            WITH_ARCHIVES + "retrieve: {sources: [archive1], allowed_ae_titles: ['A\\\\B']}\n",
            12,
            "retrieve.allowed_ae_titles[0]",
            "",
        )

    def test_timeout_bounds(self) -> None:
        """A retrieve deadline is at most a day (a move is not a 7-day queue entry)."""
        self.assertOneError(
            WITH_ARCHIVES + "retrieve: {sources: [archive1], timeout: 2d}\n", 12, "retrieve.timeout", "at most 86400"
        )

    def test_listener_overrides(self) -> None:
        """``listen[i].retrieve`` replaces the top-level one; another listener uses the top level."""
        config = self.load(
            WITH_ARCHIVES.replace("    port: 0\n", "    port: 0\n    retrieve: {sources: [archive2]}\n  - {host: 127.0.0.1, port: 0, name: second}\n")
            + "retrieve: {sources: [archive1]}\n"
        )
        assert isinstance(config, GatewayConfig)
        self.assertEqual(config.retrieve_for(config.listen[0]), RetrieveConfig(sources=("archive2",)))
        self.assertEqual(config.retrieve_for(config.listen[1]), RetrieveConfig(sources=("archive1",)))


class WarningTests(LoadTestCase):
    """:func:`qr_warnings`: allowed, but worth a line."""

    def test_clean_configuration_has_none(self) -> None:
        """A retrieve with a modality and matching globs warns nothing."""
        config = self.load(WITH_ARCHIVES + "retrieve: {sources: [archive1], allowed_destinations: ['ws*']}\n")
        assert isinstance(config, GatewayConfig)
        self.assertEqual(qr_warnings(config), [])

    def test_glob_matching_nothing(self) -> None:
        """A glob that matches no modality allows nothing: said."""
        config = self.load(WITH_ARCHIVES + "retrieve: {sources: [archive1], allowed_destinations: ['ct*']}\n")
        assert isinstance(config, GatewayConfig)
        (warning,) = qr_warnings(config)
        self.assertIn("retrieve.allowed_destinations: 'ct*' matches no modalities entry", warning)

    def test_no_modalities(self) -> None:
        """A retrieve section without a modalities table: every C-MOVE refused 0xA801."""
        text = WITH_ARCHIVES.split("modalities:")[0] + "retrieve: {sources: [archive1]}\n"
        config = self.load(text)
        assert isinstance(config, GatewayConfig)
        (warning,) = qr_warnings(config)
        self.assertIn("0xA801", warning)

    def test_large_max_results(self) -> None:
        """A guard above 100000 is said to be large."""
        config = self.load(WITH_ARCHIVES + "query: {sources: [archive1], max_results: 200000}\n")
        assert isinstance(config, GatewayConfig)
        (warning,) = qr_warnings(config)
        self.assertIn("query.max_results", warning)


class ShippedExampleTests(LoadTestCase):
    """The commented Q/R example of etc/gateway.yaml is valid once uncommented."""

    def test_example_loads_and_shows_the_defaults(self) -> None:
        """Uncommented (with the pacs destination and a modality), the example loads; its values are the defaults."""
        import os

        path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "etc", "gateway.yaml")
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
        start = lines.index("# query:")
        block = "\n".join(line[2:] for line in lines[start:] if line.startswith("# ")) + "\n"
        config = self.load(
            MINIMAL
            + "destinations:\n  pacs: {ae_title: PACS, host: h, port: 104}\n"
            + "modalities:\n  ws1: {ae_title: WS1, host: h, port: 104}\n"
            + block
        )
        assert isinstance(config, GatewayConfig)
        self.assertEqual(config.query, QueryConfig(sources=("pacs",), allowed_ae_titles=("*",)))
        self.assertEqual(
            config.retrieve, RetrieveConfig(sources=("pacs",), allowed_destinations=("*",), allowed_ae_titles=("*",))
        )


class CheckCommandTests(SynchronousTestCase):
    """``dicom-gateway check`` prints :func:`qr_warnings` after the summary (exit 0: the file is valid)."""

    def test_check_prints_the_qr_warnings(self) -> None:
        """A retrieve without a modalities table is valid; check says every C-MOVE will be refused, in text and JSON."""
        import json
        import os
        import shutil
        import tempfile

        from tests.unit.test_check import run_check

        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "gw.yaml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(WITH_ARCHIVES.split("modalities:")[0] + "retrieve: {sources: [archive1]}\n")
        code, out, _ = run_check("-c", path)
        self.assertEqual(code, 0)
        self.assertIn("configuration is valid", out)
        self.assertIn("retrieve: the modalities table is empty", out)
        code, out, _ = run_check("-c", path, "--json")
        (warning,) = json.loads(out)["warnings"]
        self.assertIn("0xA801", warning)
