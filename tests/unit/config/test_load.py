"""Tests for :mod:`gateway.config.load`.

Each error test checks the three things an operator needs from a message:
the file, the 1-based line, and the key path, in the
``file:line: key.path: message`` rendering.
"""

from __future__ import annotations

import os
from textwrap import dedent

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import load as load_module
from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.load import load_config, load_config_text
from gateway.config.schema import AcceptConfig, GatewayConfig, LimitsConfig, ListenerConfig

#: The repository root, found from this file (tests/unit/config/).
REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)

#: The folder relative paths are resolved against in text-based tests.
BASE_DIR = os.path.abspath(os.sep + os.path.join("srv", "gw", "etc"))

#: The smallest valid configuration.
MINIMAL = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
spool: spool
"""

#: A valid configuration using every key, for mutation tests.
VALID_FULL = MINIMAL + """\
accept:
  calling_ae_titles: ["CT_*", "MR?"]
  unknown_sop_classes: true
limits:
  max_associations: 8
  max_pdu_length: 16384
  acse_timeout: 250ms
  dimse_timeout: 2m
  network_timeout: 90
  max_instance_size: 500MB
"""


def _text(source: str) -> str:
    """Dedent a YAML snippet written inside a test.

    :param source: The indented snippet.
    :returns: The snippet with common indentation removed.
    """
    return dedent(source).lstrip("\n")


class LoadTestCase(SynchronousTestCase):
    """Helpers to load text and assert on the collected errors."""

    def load(self, text: str) -> object:
        """Load ``text`` as ``gw.yaml`` in :data:`BASE_DIR`.

        :param text: The YAML text.
        :returns: The configuration.
        """
        return load_config_text(text, "gw.yaml", BASE_DIR)

    def errors(self, text: str) -> list[ConfigError]:
        """Load ``text`` and return the errors it must produce.

        :param text: The YAML text.
        :returns: The collected errors.
        """
        raised = self.assertRaises(ConfigErrors, load_config_text, text, "gw.yaml", BASE_DIR)
        # The rendering is what operators see: never a traceback.
        self.assertNotIn("Traceback", str(raised))
        return raised.errors

    def assertOneError(
        self, text: str, line: int | None, key_path: str, fragment: str
    ) -> ConfigError:
        """Assert that ``text`` produces exactly one error, located as given.

        :param text: The YAML text.
        :param line: The expected 1-based line.
        :param key_path: The expected key path.
        :param fragment: Text the message must contain.
        :returns: The error.
        """
        errors = self.errors(text)
        self.assertEqual(len(errors), 1, "\n".join(map(str, errors)))
        return self.assertError(errors[0], line, key_path, fragment)

    def assertError(
        self, error: ConfigError, line: int | None, key_path: str, fragment: str
    ) -> ConfigError:
        """Assert that one error has the given location and message fragment.

        :param error: The error.
        :param line: The expected 1-based line.
        :param key_path: The expected key path.
        :param fragment: Text the message must contain.
        :returns: The error.
        """
        self.assertEqual((error.file, error.line, error.key_path), ("gw.yaml", line, key_path))
        self.assertIn(fragment, error.message)
        prefix = "gw.yaml" if line is None else f"gw.yaml:{line}"
        if key_path:
            prefix += f": {key_path}"
        self.assertTrue(str(error).startswith(prefix + ": "), str(error))
        return error


class ValidConfigTests(LoadTestCase):
    """Valid files load into the schema, with defaults filled in."""

    def test_minimal_config_gets_defaults(self) -> None:
        """Optional sections absent from the file take their documented defaults."""
        config = load_config_text(MINIMAL, "gw.yaml", BASE_DIR)
        self.assertEqual(config.ae_title, "GW")
        self.assertEqual(config.listen, (ListenerConfig("127.0.0.1", 0, "127.0.0.1:0"),))
        self.assertEqual(config.accept, AcceptConfig())
        self.assertEqual(config.limits, LimitsConfig())
        self.assertEqual(config.source, "gw.yaml")

    def test_null_sections_mean_defaults(self) -> None:
        """A section whose entries are all commented out takes the defaults."""
        config = load_config_text(MINIMAL + "limits:\naccept:\n", "gw.yaml", BASE_DIR)
        self.assertEqual(config.limits, LimitsConfig())
        self.assertEqual(config.accept, AcceptConfig())

    def test_every_key_is_read(self) -> None:
        """Each key of each section reaches the configuration, converted."""
        config = load_config_text(
            MINIMAL
            + _text(
                """
                accept:
                  calling_ae_titles: ["CT_*", "MR?"]
                  unknown_sop_classes: true
                limits:
                  max_associations: 8
                  max_pdu_length: 16384
                  acse_timeout: 250ms
                  dimse_timeout: 2m
                  network_timeout: 90
                  max_instance_size: 500MB
                """
            ),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(config.accept, AcceptConfig(("CT_*", "MR?"), True))
        self.assertEqual(
            config.limits,
            LimitsConfig(
                max_associations=8,
                max_pdu_length=16384,
                acse_timeout=0.25,
                dimse_timeout=120.0,
                network_timeout=90.0,
                max_instance_size=500_000_000,
            ),
        )

    def test_listener_names_and_several_listeners(self) -> None:
        """Several listeners load in order; names default to host:port."""
        config = load_config_text(
            _text(
                """
                ae_title: GW
                listen:
                  - {host: 0.0.0.0, port: 11112, name: plain}
                  - {host: "::", port: 104}
                  - {host: 127.0.0.1, port: 0}
                  - {host: 127.0.0.1, port: 0, name: second-ephemeral}
                spool: spool
                """
            ),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(
            [listener.name for listener in config.listen],
            ["plain", ":::104", "127.0.0.1:0", "second-ephemeral"],
        )
        self.assertEqual(config.listen[1].port, 104)

    def test_ae_title_spaces_are_not_significant(self) -> None:
        """Leading and trailing spaces of the AE title are dropped (PS3.5 6.2)."""
        config = load_config_text(
            MINIMAL.replace("ae_title: GW", 'ae_title: "  GW  "'), "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.ae_title, "GW")

    def test_anchors_and_aliases_are_followed(self) -> None:
        """A value reused through a YAML alias loads like a written-out one."""
        config = load_config_text(
            _text(
                """
                ae_title: &title GW
                listen: [{host: h, port: 1, name: *title}]
                spool: spool
                """
            ),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(config.listen[0].name, "GW")


class PathTests(LoadTestCase):
    """Paths are relative to the configuration file and come out absolute."""

    def test_relative_spool_is_resolved_against_base_dir(self) -> None:
        """A relative spool path is joined to the configuration's folder."""
        config = load_config_text(MINIMAL, "gw.yaml", BASE_DIR)
        self.assertEqual(config.spool.path, os.path.join(BASE_DIR, "spool"))

    def test_parent_references_are_normalised(self) -> None:
        """``../var/spool`` comes out without the ``..``."""
        config = load_config_text(
            MINIMAL.replace("spool: spool", "spool: ../var/spool"), "gw.yaml", BASE_DIR
        )
        self.assertEqual(
            config.spool.path, os.path.join(os.path.dirname(BASE_DIR), "var", "spool")
        )

    def test_absolute_spool_is_kept(self) -> None:
        """An absolute spool path is used as written."""
        config = load_config_text(
            MINIMAL.replace("spool: spool", "spool: /data/spool"), "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.spool.path, "/data/spool")

    def test_spool_mapping_form(self) -> None:
        """``spool: {path: ...}`` is the same as ``spool: ...``."""
        config = load_config_text(
            MINIMAL.replace("spool: spool", "spool:\n  path: spool"), "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.spool.path, os.path.join(BASE_DIR, "spool"))

    def test_relative_base_dir_is_made_absolute(self) -> None:
        """Even with a relative base folder, the resulting path is absolute."""
        config = load_config_text(MINIMAL, "gw.yaml", "etc")
        self.assertTrue(os.path.isabs(config.spool.path))
        self.assertEqual(config.spool.path, os.path.abspath(os.path.join("etc", "spool")))

    def test_file_paths_are_relative_to_the_file_not_the_cwd(self) -> None:
        """load_config resolves against the file's folder and records its absolute path."""
        folder = self.mktemp()
        os.makedirs(os.path.join(folder, "conf"))
        path = os.path.join(folder, "conf", "gw.yaml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(MINIMAL.replace("spool: spool", "spool: ../data"))
        config = load_config(path)
        self.assertEqual(config.spool.path, os.path.join(os.path.abspath(folder), "data"))
        self.assertEqual(config.source, os.path.abspath(path))

    def test_nul_in_path_is_refused(self) -> None:
        """A NUL character cannot be part of a path."""
        self.assertOneError(
            MINIMAL.replace("spool: spool", 'spool: "sp\\0ool"'), 5, "spool", "NUL"
        )

    def test_empty_spool_path_is_refused(self) -> None:
        """An empty spool path is an error at its line and key."""
        self.assertOneError(
            MINIMAL.replace("spool: spool", 'spool: {path: ""}'),
            5,
            "spool.path",
            "must not be empty",
        )


class ShippedConfigTests(SynchronousTestCase):
    """The example configuration in the repository is valid."""

    def test_etc_gateway_yaml_loads(self) -> None:
        """etc/gateway.yaml loads and says what its comments say."""
        path = os.path.join(REPO_ROOT, "etc", "gateway.yaml")
        config = load_config(path)
        self.assertEqual(config.ae_title, "DICOMGW")
        self.assertEqual(
            [(listener.host, listener.port) for listener in config.listen],
            [("0.0.0.0", 11112)],
        )
        self.assertEqual(config.accept.calling_ae_titles, ("*",))
        self.assertEqual(config.spool.path, os.path.join(REPO_ROOT, "var", "spool"))
        # The limits block writes the defaults out.
        self.assertEqual(config.limits, LimitsConfig())


class UnknownKeyTests(LoadTestCase):
    """Unknown keys are errors at every level, with suggestions."""

    def test_misspelt_key_gets_a_suggestion(self) -> None:
        """A near miss names the key it probably meant."""
        error = self.assertOneError(
            MINIMAL + "limits:\n  max_pdu_lenght: 16384\n",
            7,
            "limits.max_pdu_lenght",
            "unknown key 'max_pdu_lenght'",
        )
        self.assertIn("did you mean 'max_pdu_length'?", error.message)

    def test_unrelated_key_lists_the_known_ones(self) -> None:
        """With no near miss, the known keys of that level are listed."""
        error = self.assertOneError(
            MINIMAL + "xyzzy: []\n", 6, "xyzzy", "unknown key 'xyzzy'"
        )
        self.assertIn("ae_title, listen, accept, limits, spool", error.message)

    def test_unknown_key_in_list_item(self) -> None:
        """An unknown key inside a listener names the list index."""
        error = self.assertOneError(
            MINIMAL.replace("    port: 0\n", "    port: 0\n    nmae: x\n"),
            5,
            "listen[0].nmae",
            "unknown key",
        )
        self.assertIn("did you mean 'name'?", error.message)

    def test_non_string_keys_are_refused(self) -> None:
        """A mapping key that YAML reads as a number is an error."""
        self.assertOneError(MINIMAL + "limits:\n  1: 2\n", 7, "limits", "keys must be strings")

    def test_merge_keys_are_refused(self) -> None:
        """YAML merge keys are not silently half-supported."""
        self.assertOneError(
            MINIMAL + "limits:\n  <<: {max_associations: 3}\n", 7, "limits", "merge keys"
        )


class WrongTypeTests(LoadTestCase):
    """Values of the wrong type say what was expected and what was found."""

    def test_section_of_wrong_type(self) -> None:
        """A section given as a list says a mapping was expected."""
        self.assertOneError(
            MINIMAL + "limits: [1, 2]\n", 6, "limits", "expected a mapping, got a list"
        )

    def test_listen_must_be_a_list(self) -> None:
        """A single listener mapping instead of a list is refused."""
        self.assertOneError(
            "ae_title: GW\nlisten:\n  host: h\n  port: 1\nspool: s\n",
            3,
            "listen",
            "expected a list, got a mapping",
        )

    def test_string_where_integer_expected(self) -> None:
        """A quoted number is not an integer."""
        self.assertOneError(
            MINIMAL.replace("port: 0", 'port: "104"'),
            4,
            "listen[0].port",
            "expected an integer between 0 and 65535, got a string ('104')",
        )

    def test_boolean_is_not_an_integer(self) -> None:
        """``true`` is not accepted as the integer 1."""
        self.assertOneError(
            MINIMAL.replace("port: 0", "port: true"), 4, "listen[0].port", "got a boolean"
        )

    def test_float_is_not_an_integer(self) -> None:
        """A number with a fraction is not an integer."""
        self.assertOneError(
            MINIMAL + "limits:\n  max_associations: 8.5\n",
            7,
            "limits.max_associations",
            "expected an integer",
        )

    def test_number_where_string_expected_suggests_quoting(self) -> None:
        """A host YAML reads as a number gets a hint to quote it."""
        error = self.assertOneError(
            MINIMAL.replace("host: 127.0.0.1", "host: 12"),
            3,
            "listen[0].host",
            "expected a string, got an integer ('12')",
        )
        self.assertIn("quote the value", error.message)

    def test_string_where_boolean_expected(self) -> None:
        """A quoted "true" is not a boolean."""
        self.assertOneError(
            MINIMAL + 'accept:\n  unknown_sop_classes: "true"\n',
            7,
            "accept.unknown_sop_classes",
            "expected a boolean",
        )

    def test_string_where_list_expected(self) -> None:
        """A single pattern must still be written as a list."""
        self.assertOneError(
            MINIMAL + 'accept:\n  calling_ae_titles: "*"\n',
            7,
            "accept.calling_ae_titles",
            "expected a list, got a string",
        )

    def test_spool_of_wrong_type(self) -> None:
        """A spool given as a list says a path or mapping was expected."""
        self.assertOneError(
            MINIMAL.replace("spool: spool", "spool: [a]"),
            5,
            "spool",
            "expected a string (a path) or a mapping, got a list",
        )

    def test_explicit_tag_with_bad_text(self) -> None:
        """An explicitly tagged scalar that does not parse is an error, not a crash."""
        self.assertOneError(
            MINIMAL.replace("port: 0", "port: !!int abc"), 4, "listen[0].port", "not valid"
        )

    def test_top_level_must_be_a_mapping(self) -> None:
        """A file holding a list is refused at line 1."""
        self.assertOneError("- 1\n- 2\n", 1, "", "expected a mapping at the top level")

    def test_empty_file(self) -> None:
        """An empty (or comment-only) file names the required keys."""
        for text in ("", "# nothing yet\n"):
            error = self.assertOneError(text, None, "", "the file is empty")
            self.assertIn("ae_title, listen, spool", error.message)


class DurationAndSizeTests(LoadTestCase):
    """Durations and sizes are parsed and bounded."""

    def test_bad_duration(self) -> None:
        """A duration with an unknown unit is an error at its line and key."""
        self.assertOneError(
            MINIMAL + "limits:\n  acse_timeout: 5x\n",
            7,
            "limits.acse_timeout",
            "invalid duration '5x'",
        )

    def test_negative_duration(self) -> None:
        """A negative duration says so."""
        self.assertOneError(
            MINIMAL + "limits:\n  dimse_timeout: -1s\n",
            7,
            "limits.dimse_timeout",
            "must not be negative",
        )

    def test_zero_timeout_is_refused(self) -> None:
        """A timer of zero seconds is refused."""
        self.assertOneError(
            MINIMAL + "limits:\n  network_timeout: 0s\n",
            7,
            "limits.network_timeout",
            "must be more than 0",
        )

    def test_timeout_over_a_day_is_refused(self) -> None:
        """A timer longer than a day is taken for a typo."""
        self.assertOneError(
            MINIMAL + "limits:\n  acse_timeout: 2d\n",
            7,
            "limits.acse_timeout",
            "at most 86400 seconds",
        )

    def test_bad_size(self) -> None:
        """A size with an unknown unit is an error at its line and key."""
        self.assertOneError(
            MINIMAL + "limits:\n  max_instance_size: 10XB\n",
            7,
            "limits.max_instance_size",
            "unknown size unit 'XB'",
        )

    def test_size_as_plain_integer(self) -> None:
        """A bare integer size is bytes."""
        config = load_config_text(
            MINIMAL + "limits:\n  max_instance_size: 1048576\n", "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.limits.max_instance_size, 1048576)

    def test_max_pdu_length_range(self) -> None:
        """max_pdu_length outside 4096..16777216 gives the documented message."""
        for value in (4095, 16777217, 0):
            self.assertEqual(
                str(
                    self.assertOneError(
                        MINIMAL + f"limits:\n  max_pdu_length: {value}\n",
                        7,
                        "limits.max_pdu_length",
                        "",
                    )
                ),
                f"gw.yaml:7: limits.max_pdu_length: must be an integer between 4096 "
                f"and 16777216, got {value}",
            )

    def test_max_pdu_length_bounds_are_inclusive(self) -> None:
        """Exactly 4096 and exactly 16777216 are accepted."""
        for value in (4096, 16777216):
            config = load_config_text(
                MINIMAL + f"limits:\n  max_pdu_length: {value}\n", "gw.yaml", BASE_DIR
            )
            self.assertEqual(config.limits.max_pdu_length, value)

    def test_max_associations_at_least_one(self) -> None:
        """Zero associations is refused."""
        self.assertOneError(
            MINIMAL + "limits:\n  max_associations: 0\n",
            7,
            "limits.max_associations",
            "at least 1",
        )


class AETitleTests(LoadTestCase):
    """AE titles follow the AE value representation (PS3.5 Table 6.2-1)."""

    def replace_title(self, literal: str) -> str:
        """Put ``literal`` (YAML source) in place of the minimal AE title.

        :param literal: The YAML scalar, quoted as needed.
        :returns: The configuration text.
        """
        return MINIMAL.replace("ae_title: GW", f"ae_title: {literal}")

    def test_longer_than_16_characters(self) -> None:
        """Seventeen characters are one too many."""
        self.assertOneError(
            self.replace_title("ABCDEFGHIJKLMNOPQ"), 1, "ae_title", "at most 16 characters"
        )

    def test_exactly_16_characters(self) -> None:
        """Sixteen characters are accepted."""
        config = load_config_text(self.replace_title("ABCDEFGHIJKLMNOP"), "gw.yaml", BASE_DIR)
        self.assertEqual(config.ae_title, "ABCDEFGHIJKLMNOP")

    def test_backslash(self) -> None:
        """A backslash is the multi-value delimiter and is refused."""
        self.assertOneError(self.replace_title(r"'GW\X'"), 1, "ae_title", "backslash")

    def test_control_and_non_ascii_characters(self) -> None:
        """Tabs, other control characters and non-ASCII letters are refused."""
        for literal in ('"GW\\tX"', '"GW\\x1b"', "GWÄ"):
            self.assertOneError(
                self.replace_title(literal), 1, "ae_title", "printable ASCII"
            )

    def test_all_spaces(self) -> None:
        """A title of only spaces is refused, as is an empty one."""
        for literal in ('"    "', '""'):
            self.assertOneError(self.replace_title(literal), 1, "ae_title", "only spaces")

    def test_non_string_title(self) -> None:
        """A title YAML reads as a number or boolean must be quoted."""
        for literal in ("12345", "NO"):
            error = self.assertOneError(
                self.replace_title(literal), 1, "ae_title", "expected a string"
            )
            self.assertIn("quote the value", error.message)

    def test_calling_ae_pattern_with_backslash(self) -> None:
        """Calling AE patterns follow the same character rules, per item."""
        self.assertOneError(
            MINIMAL + "accept:\n  calling_ae_titles: ['CT_*', 'A\\B']\n",
            7,
            "accept.calling_ae_titles[1]",
            "backslash",
        )

    def test_empty_calling_ae_list(self) -> None:
        """An empty allow-list is refused, with the way to accept any."""
        self.assertOneError(
            MINIMAL + "accept:\n  calling_ae_titles: []\n",
            7,
            "accept.calling_ae_titles",
            "use ['*']",
        )


class MissingKeyTests(LoadTestCase):
    """Required keys are reported where their mapping is."""

    def test_missing_top_level_key(self) -> None:
        """A missing ae_title is reported at the top-level mapping."""
        self.assertOneError(
            MINIMAL.replace("ae_title: GW\n", ""), 1, "ae_title", "required key is missing"
        )

    def test_missing_key_in_list_item(self) -> None:
        """A listener without a port is reported at that listener."""
        self.assertOneError(
            MINIMAL.replace("    port: 0\n", ""), 3, "listen[0].port", "required key is missing"
        )

    def test_missing_spool_path(self) -> None:
        """The mapping form of spool needs its path."""
        self.assertOneError(
            MINIMAL.replace("spool: spool", "spool: {}"), 5, "spool.path", "required"
        )

    def test_all_required_keys_missing(self) -> None:
        """Each missing required key is its own error."""
        errors = self.errors("accept: {}\n")
        self.assertEqual(
            sorted(error.key_path for error in errors), ["ae_title", "listen", "spool"]
        )

    def test_empty_listen_list(self) -> None:
        """At least one listener is required."""
        self.assertOneError(
            "ae_title: GW\nlisten: []\nspool: s\n", 2, "listen", "at least one listener"
        )


class DuplicateTests(LoadTestCase):
    """Duplicates in the file are errors, not silent overrides."""

    def test_duplicate_key(self) -> None:
        """A repeated key names the line of its first appearance."""
        error = self.assertOneError(
            MINIMAL + "ae_title: OTHER\n", 6, "ae_title", "duplicate key 'ae_title'"
        )
        self.assertIn("first given on line 1", error.message)

    def test_duplicate_key_in_nested_mapping(self) -> None:
        """A repeated key inside a listener carries the list index in its path."""
        self.assertOneError(
            MINIMAL.replace("    port: 0\n", "    port: 0\n    port: 1\n"),
            5,
            "listen[0].port",
            "duplicate key",
        )

    def test_duplicate_listener_names(self) -> None:
        """Two listeners cannot share a name."""
        self.assertOneError(
            _text(
                """
                ae_title: GW
                listen:
                  - {host: a, port: 1, name: x}
                  - {host: b, port: 2, name: x}
                spool: s
                """
            ),
            4,
            "listen[1].name",
            "duplicate listener name 'x' (also listen[0])",
        )

    def test_duplicate_listener_address(self) -> None:
        """Two listeners cannot bind the same fixed address."""
        self.assertOneError(
            _text(
                """
                ae_title: GW
                listen:
                  - {host: a, port: 104, name: one}
                  - {host: a, port: 104, name: two}
                spool: s
                """
            ),
            4,
            "listen[1]",
            "a:104 is already used by listen[0]",
        )


class PortTests(LoadTestCase):
    """Ports are integers from 0 to 65535."""

    def test_port_above_range(self) -> None:
        """65536 and above are refused with the range."""
        self.assertOneError(
            MINIMAL.replace("port: 0", "port: 70000"),
            4,
            "listen[0].port",
            "must be an integer between 0 and 65535, got 70000",
        )

    def test_negative_port(self) -> None:
        """Negative ports are refused."""
        self.assertOneError(
            MINIMAL.replace("port: 0", "port: -1"), 4, "listen[0].port", "got -1"
        )

    def test_range_ends_are_accepted(self) -> None:
        """0 (any free port) and 65535 are both valid."""
        for port in (0, 65535):
            config = load_config_text(
                MINIMAL.replace("port: 0", f"port: {port}"), "gw.yaml", BASE_DIR
            )
            self.assertEqual(config.listen[0].port, port)


class YAMLSyntaxTests(LoadTestCase):
    """YAML syntax errors become one located ConfigError."""

    def test_syntax_error_has_the_problem_line(self) -> None:
        """An unclosed flow list is reported at the line the parser failed."""
        error = self.assertOneError(
            "ae_title: GW\nlisten: [1\nspool: s\n", 3, "", "invalid YAML"
        )
        self.assertNotIn("\n", error.message)

    def test_unquoted_star_gets_a_hint(self) -> None:
        """An unquoted ``*`` pattern (YAML alias syntax) suggests quoting."""
        error = self.assertOneError(
            MINIMAL + "accept:\n  calling_ae_titles: [*]\n", 7, "", "invalid YAML"
        )
        self.assertIn('must be quoted, e.g. "*"', error.message)

    def test_tab_indentation(self) -> None:
        """A tab used for indentation is a located syntax error."""
        self.assertOneError(
            "ae_title: GW\nlimits:\n\tmax_associations: 1\n", 3, "", "invalid YAML"
        )

    def test_forbidden_character(self) -> None:
        """A control character YAML forbids is reported with its line."""
        self.assertOneError(MINIMAL + "\x01\n", 6, "", "U+0001")

    def test_several_documents(self) -> None:
        """A second YAML document in the file is an error."""
        self.assertOneError(MINIMAL + "---\na: 1\n", 6, "", "single document")

    def test_deep_nesting(self) -> None:
        """Pathologically deep nesting is an error, not a RecursionError."""
        self.assertOneError("a: " + "[" * 20000 + "]" * 20000 + "\n", None, "", "too deep")


class FileTests(SynchronousTestCase):
    """Problems with the file itself."""

    def write(self, data: bytes) -> str:
        """Write ``data`` to a fresh file.

        :param data: The contents.
        :returns: The file's path.
        """
        path = self.mktemp()
        with open(path, "wb") as stream:
            stream.write(data)
        return path

    def test_missing_file(self) -> None:
        """A missing file gives one error with no line."""
        path = self.mktemp()
        raised = self.assertRaises(ConfigErrors, load_config, path)
        [error] = raised.errors
        self.assertEqual((error.file, error.line, error.key_path), (path, None, ""))
        self.assertEqual(
            str(error), f"{path}: cannot read the configuration file: No such file or directory"
        )

    def test_directory_instead_of_file(self) -> None:
        """A folder given as the file is a read error, not a crash."""
        path = self.mktemp()
        os.makedirs(path)
        [error] = self.assertRaises(ConfigErrors, load_config, path).errors
        self.assertIn("cannot read the configuration file", error.message)

    def test_errors_name_the_path_as_given(self) -> None:
        """Validation errors from a file name it as the caller wrote it."""
        path = self.write(MINIMAL.replace("port: 0", "port: x").encode())
        [error] = self.assertRaises(ConfigErrors, load_config, path).errors
        self.assertTrue(str(error).startswith(f"{path}:4: listen[0].port: "), str(error))

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 are reported at their line."""
        path = self.write(MINIMAL.encode() + b"# caf\xe9\n")
        [error] = self.assertRaises(ConfigErrors, load_config, path).errors
        self.assertEqual(error.line, 6)
        self.assertIn("not valid UTF-8 (byte 0xe9)", error.message)

    def test_byte_order_mark_is_accepted(self) -> None:
        """A UTF-8 byte-order mark written by some editors is ignored."""
        path = self.write(b"\xef\xbb\xbf" + MINIMAL.encode())
        self.assertEqual(load_config(path).ae_title, "GW")

    def test_oversized_file(self) -> None:
        """A file over the size cap is refused without being read whole."""
        self.patch(load_module, "MAX_CONFIG_BYTES", 10)
        path = self.write(MINIMAL.encode())
        [error] = self.assertRaises(ConfigErrors, load_config, path).errors
        self.assertIn("larger than 10 bytes", error.message)


class SeveralErrorsTests(LoadTestCase):
    """Every error is reported, not only the first."""

    def test_all_errors_are_collected_in_line_order(self) -> None:
        """Errors in different sections all appear, sorted by line."""
        errors = self.errors(
            _text(
                """
                ae_title: "THIS_IS_FAR_TOO_LONG"
                listen:
                  - host: 0.0.0.0
                    port: 70000
                accept:
                  calling_ae_titles: "*"
                limits:
                  max_pdu_lenght: 100
                  acse_timeout: 5x
                spool: {path: ""}
                extra: 1
                """
            )
        )
        located = [(error.line, error.key_path) for error in errors]
        self.assertEqual(
            located,
            [
                (1, "ae_title"),
                (4, "listen[0].port"),
                (6, "accept.calling_ae_titles"),
                (8, "limits.max_pdu_lenght"),
                (9, "limits.acse_timeout"),
                (10, "spool.path"),
                (11, "extra"),
            ],
        )

    def test_errors_render_one_per_line(self) -> None:
        """The exception text has one located line per error."""
        raised = self.assertRaises(
            ConfigErrors,
            load_config_text,
            "ae_title: 1\nlisten: {}\nspool: []\n",
            "gw.yaml",
            BASE_DIR,
        )
        lines = str(raised).splitlines()
        self.assertEqual(len(lines), 3)
        self.assertEqual(
            [line.split(": ")[0:2] for line in lines],
            [["gw.yaml:1", "ae_title"], ["gw.yaml:2", "listen"], ["gw.yaml:3", "spool"]],
        )

    def test_errors_in_several_listeners(self) -> None:
        """A bad field in each of two listeners gives two errors."""
        errors = self.errors(
            _text(
                """
                ae_title: GW
                listen:
                  - {host: a, port: x}
                  - {host: b, port: 99999}
                spool: s
                """
            )
        )
        self.assertEqual(
            [error.key_path for error in errors], ["listen[0].port", "listen[1].port"]
        )

    def test_loads_are_independent(self) -> None:
        """Errors from one load never leak into the next."""
        self.errors(MINIMAL.replace("port: 0", "port: x"))
        config = load_config_text(MINIMAL, "gw.yaml", BASE_DIR)
        self.assertEqual(config.ae_title, "GW")


class NeverATracebackTests(SynchronousTestCase):
    """Whatever the text, loading ends in a config or in ConfigErrors."""

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=200))
    def test_arbitrary_text(self, text: str) -> None:
        """Random text never raises anything but ConfigErrors."""
        self.assertLoadsOrReportsErrors(text)

    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(min_value=0, max_value=len(VALID_FULL)),
        st.integers(min_value=0, max_value=len(VALID_FULL)),
        st.text(alphabet=":-[]{}*&!#'\" \n\t0123456789abc", max_size=8),
    )
    def test_mutated_valid_file(self, start: int, end: int, insert: str) -> None:
        """Splicing YAML punctuation into a valid file never raises anything but ConfigErrors."""
        start, end = min(start, end), max(start, end)
        self.assertLoadsOrReportsErrors(VALID_FULL[:start] + insert + VALID_FULL[end:])

    def assertLoadsOrReportsErrors(self, text: str) -> None:
        """Assert that ``text`` loads, or fails with located, non-empty errors.

        :param text: The YAML text.
        """
        try:
            config = load_config_text(text, "gw.yaml", BASE_DIR)
        except ConfigErrors as raised:
            self.assertTrue(raised.errors)
            for error in raised.errors:
                self.assertEqual(error.file, "gw.yaml")
                self.assertTrue(error.message)
                self.assertNotIn("\n", str(error))
        else:
            self.assertIsInstance(config, GatewayConfig)
