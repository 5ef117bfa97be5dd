"""Tests for the store-and-forward part of :mod:`gateway.config.load`.

Destinations, routes, route files, the spool's free-space floor, duplicate
control, retention and the queue path. As in ``test_load``, each error test
checks the file, the 1-based line and the key path an operator will see.
"""

from __future__ import annotations

import os
from textwrap import dedent

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.load import load_config, load_config_text
from gateway.config.schema import (
    CircuitConfig,
    DicomDestination,
    FolderDestination,
    GatewayConfig,
    RetryConfig,
    RouteConfig,
    SpoolConfig,
)
from tests.unit.config.test_load import BASE_DIR, MINIMAL, REPO_ROOT, LoadTestCase

#: A configuration with one folder destination and one route to it; extra
#: text appended to it starts on line 10.
WITH_FOLDER = MINIMAL + """\
destinations:
  archive: {folder: out}
routes:
  - {name: everything, forward: [archive]}
"""


def _text(source: str) -> str:
    """Dedent a YAML snippet written inside a test.

    :param source: The indented snippet.
    :returns: The snippet with common indentation removed.
    """
    return dedent(source).lstrip("\n")


def _dicom(extra: str = "") -> str:
    """Make a configuration with one DICOM destination ``pacs`` on lines 7-10.

    :param extra: Lines added inside the destination, 4-space indented,
        starting on line 11.
    :returns: The YAML text.
    """
    return (
        MINIMAL
        + "destinations:\n"
        + "  pacs:\n"
        + "    ae_title: PACS\n"
        + "    host: pacs.example.org\n"
        + "    port: 104\n"
        + extra
    )


class DefaultsTests(LoadTestCase):
    """A configuration without the new sections gets their defaults."""

    def test_no_destinations_or_routes(self) -> None:
        """Without destinations and routes, both are empty tuples."""
        config = load_config_text(MINIMAL, "gw.yaml", BASE_DIR)
        self.assertEqual((config.destinations, config.routes), ((), ()))

    def test_duplicate_window_and_retention_defaults(self) -> None:
        """Duplicate control lasts an hour and delivered files are not kept."""
        config = load_config_text(MINIMAL, "gw.yaml", BASE_DIR)
        self.assertEqual((config.duplicate_window, config.keep_delivered), (3600.0, 0.0))

    def test_queue_path_defaults_into_the_spool(self) -> None:
        """Without queue.path, the journal is queue.sqlite inside the spool folder."""
        config = load_config_text(MINIMAL, "gw.yaml", BASE_DIR)
        self.assertEqual(config.queue_path, os.path.join(BASE_DIR, "spool", "queue.sqlite"))

    def test_queue_path_default_follows_the_spool_mapping(self) -> None:
        """The default queue path uses the spool path of the mapping form too."""
        config = load_config_text(
            MINIMAL.replace("spool: spool", "spool: {path: /data/sp}"), "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.queue_path, "/data/sp/queue.sqlite")

    def test_null_sections_mean_defaults(self) -> None:
        """Sections whose entries are all commented out take the defaults."""
        config = load_config_text(
            MINIMAL + "destinations:\nroutes:\nroute_files:\nqueue:\nduplicates:\nretention:\n",
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual((config.destinations, config.routes), ((), ()))
        self.assertEqual((config.duplicate_window, config.keep_delivered), (3600.0, 0.0))
        self.assertEqual(config.queue_path, os.path.join(BASE_DIR, "spool", "queue.sqlite"))

    def test_dicom_destination_defaults(self) -> None:
        """A DICOM destination with only its three kind keys takes every default."""
        config = load_config_text(_dicom(), "gw.yaml", BASE_DIR)
        self.assertEqual(
            config.destinations,
            (DicomDestination("pacs", "PACS", "pacs.example.org", 104, "GW"),),
        )
        self.assertEqual(config.destination("pacs").retry, RetryConfig())

    def test_folder_destination_defaults(self) -> None:
        """A folder destination gets the study/series/instance pattern."""
        config = load_config_text(WITH_FOLDER, "gw.yaml", BASE_DIR)
        destination = config.destination("archive")
        assert isinstance(destination, FolderDestination)
        self.assertEqual(
            destination.pattern, "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
        )
        self.assertEqual((destination.retry, destination.circuit), (RetryConfig(), CircuitConfig()))


class ValidTests(LoadTestCase):
    """Valid new sections load into the schema, converted."""

    def test_every_dicom_key_is_read(self) -> None:
        """Each key of a DICOM destination reaches its field, durations in seconds."""
        config = load_config_text(
            _dicom(
                "    calling_ae_title: OTHER\n"
                "    max_associations: 4\n"
                "    batch_size: 200\n"
                "    idle_release: 2s\n"
                "    max_pdu_length: 16384\n"
                "    timeouts: {connect: 3s, acse: 4s, dimse: 2m}\n"
                "    retry: {initial_delay: 500ms, max_delay: 10m, multiplier: 1.5,\n"
                "            jitter: 0, max_attempts: 9, max_age: 2d,\n"
                "            unknown_status_attempts: 1}\n"
                "    circuit: {failures: 7}\n"
            ),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(
            config.destinations,
            (
                DicomDestination(
                    name="pacs",
                    ae_title="PACS",
                    host="pacs.example.org",
                    port=104,
                    calling_ae_title="OTHER",
                    max_associations=4,
                    batch_size=200,
                    idle_release=2.0,
                    max_pdu_length=16384,
                    connect_timeout=3.0,
                    acse_timeout=4.0,
                    dimse_timeout=120.0,
                    retry=RetryConfig(0.5, 600.0, 1.5, 0.0, 9, 172800.0, 1),
                    circuit=CircuitConfig(7),
                ),
            ),
        )

    def test_calling_ae_title_defaults_to_the_gateways(self) -> None:
        """Without calling_ae_title, a DICOM destination presents our own AE title."""
        config = load_config_text(
            _dicom().replace("ae_title: GW", 'ae_title: " OURS "'), "gw.yaml", BASE_DIR
        )
        destination = config.destination("pacs")
        assert isinstance(destination, DicomDestination)
        self.assertEqual(destination.calling_ae_title, "OURS")

    def test_partial_retry_keeps_other_defaults(self) -> None:
        """A retry section giving one key leaves the others at their defaults."""
        config = load_config_text(
            _dicom("    retry: {max_attempts: 5}\n"), "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.destination("pacs").retry, RetryConfig(max_attempts=5))

    def test_folder_path_and_pattern(self) -> None:
        """A folder path is resolved against the file's folder; a pattern is kept."""
        config = load_config_text(
            MINIMAL
            + "destinations:\n"
            + "  f:\n"
            + "    folder: ../archive\n"
            + '    pattern: "{calling_ae_title}/{StudyDate}-{PatientID}/{SOPInstanceUID}.dcm"\n',
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(
            config.destinations,
            (
                FolderDestination(
                    "f",
                    os.path.join(os.path.dirname(BASE_DIR), "archive"),
                    "{calling_ae_title}/{StudyDate}-{PatientID}/{SOPInstanceUID}.dcm",
                ),
            ),
        )

    def test_literal_braces_in_pattern(self) -> None:
        """Doubled braces are literal text in a pattern, not fields."""
        config = load_config_text(
            WITH_FOLDER.replace("{folder: out}", '{folder: out, pattern: "{{x}}/{Modality}"}'),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(config.destination("archive").pattern, "{{x}}/{Modality}")

    def test_destinations_keep_file_order(self) -> None:
        """Destinations come out in the order the file gives them."""
        config = load_config_text(
            MINIMAL
            + "destinations:\n"
            + "  zeta: {folder: z}\n"
            + "  alpha: {ae_title: A, host: h, port: 1}\n"
            + "  mid.dle-1_x: {folder: m}\n",
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(
            [destination.name for destination in config.destinations],
            ["zeta", "alpha", "mid.dle-1_x"],
        )

    def test_routes_with_origin(self) -> None:
        """Routes keep their order and forward lists and record file:line."""
        config = load_config_text(
            WITH_FOLDER
            + "  - name: second\n"
            + "    forward: [archive]\n",
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(
            config.routes,
            (
                RouteConfig("everything", ("archive",), "gw.yaml:9"),
                RouteConfig("second", ("archive",), "gw.yaml:10"),
            ),
        )

    def test_unused_destination_is_not_an_error(self) -> None:
        """A destination no route names loads, and is reported as unused."""
        config = load_config_text(
            WITH_FOLDER.replace(
                "  archive: {folder: out}\n", "  archive: {folder: out}\n  spare: {folder: s}\n"
            ),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(config.unused_destinations(), ("spare",))

    def test_spool_mapping_with_free_space_floor(self) -> None:
        """spool's mapping form reads min_free and resume_margin as sizes."""
        config = load_config_text(
            MINIMAL.replace(
                "spool: spool", "spool: {path: sp, min_free: 1GiB, resume_margin: 100MB}"
            ),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual(
            config.spool, SpoolConfig(os.path.join(BASE_DIR, "sp"), 1024**3, 100_000_000)
        )

    def test_spool_string_form_gets_free_space_defaults(self) -> None:
        """spool's string form has the default floor and margin."""
        config = load_config_text(MINIMAL, "gw.yaml", BASE_DIR)
        self.assertEqual(
            (config.spool.min_free_bytes, config.spool.resume_margin_bytes),
            (512 * 1024**2, 256 * 1024**2),
        )

    def test_zero_floor_is_accepted(self) -> None:
        """A floor and margin of 0 bytes are valid (the check is off)."""
        config = load_config_text(
            MINIMAL.replace("spool: spool", "spool: {path: sp, min_free: 0, resume_margin: 0}"),
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual((config.spool.min_free_bytes, config.spool.resume_margin_bytes), (0, 0))

    def test_spool_clean_interval_is_a_duration_defaulting_to_30s(self) -> None:
        """spool.clean_interval is read as a duration; absent it is 30 s; 0 is refused."""
        config = load_config_text(
            MINIMAL.replace("spool: spool", "spool: {path: sp, clean_interval: 2s}"), "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.spool.clean_interval, 2.0)
        self.assertEqual(load_config_text(MINIMAL, "gw.yaml", BASE_DIR).spool.clean_interval, 30.0)
        errors = self.assertRaises(
            ConfigErrors,
            load_config_text,
            MINIMAL.replace("spool: spool", "spool: {path: sp, clean_interval: 0s}"),
            "gw.yaml",
            BASE_DIR,
        ).errors
        self.assertEqual([e.key_path for e in errors], ["spool.clean_interval"])

    def test_duplicates_retention_and_queue(self) -> None:
        """The window, the retention and a relative queue path are read."""
        config = load_config_text(
            MINIMAL
            + "duplicates: {window: 0}\n"
            + "retention: {keep_delivered: 7d}\n"
            + "queue: {path: ../q/queue.db}\n",
            "gw.yaml",
            BASE_DIR,
        )
        self.assertEqual((config.duplicate_window, config.keep_delivered), (0.0, 7 * 86400.0))
        self.assertEqual(
            config.queue_path, os.path.join(os.path.dirname(BASE_DIR), "q", "queue.db")
        )


class DestinationErrorTests(LoadTestCase):
    """Each kind of destination mistake is located."""

    def test_destinations_must_be_a_mapping(self) -> None:
        """A list of destinations says a mapping was expected."""
        self.assertOneError(
            MINIMAL + "destinations: [a]\n", 6, "destinations", "expected a mapping, got a list"
        )

    def test_invalid_destination_name(self) -> None:
        """A name with a space is refused at its line, naming the allowed characters."""
        error = self.assertOneError(
            MINIMAL + "destinations:\n  my archive: {folder: x}\n",
            7,
            "destinations.my archive",
            "invalid destination name 'my archive'",
        )
        self.assertIn("1 to 64 letters, digits, '_', '.' or '-'", error.message)

    def test_destination_name_too_long(self) -> None:
        """A 65-character name is refused; 64 is accepted."""
        self.assertOneError(
            MINIMAL + f"destinations:\n  {'a' * 65}: {{folder: x}}\n",
            7,
            f"destinations.{'a' * 65}",
            "invalid destination name",
        )
        config = load_config_text(
            MINIMAL + f"destinations:\n  {'a' * 64}: {{folder: x}}\n", "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.destinations[0].name, "a" * 64)

    def test_destination_name_cannot_start_with_dot_or_dash(self) -> None:
        """'..' and '-x' are refused: a name must be safe as a path part and an argument."""
        for name, shown in (('".."', ".."), ('"-x"', "-x"), (".hidden", ".hidden")):
            self.assertOneError(
                MINIMAL + f"destinations:\n  {name}: {{folder: x}}\n",
                7,
                f"destinations.{shown}",
                "not starting with '.' or '-'",
            )

    def test_destination_name_cannot_take_a_move_queue_name(self) -> None:
        """'move.ws1' is refused: names starting with 'move.' are the C-MOVE queues of the modalities table (issue 16)."""
        self.assertOneError(
            MINIMAL + "destinations:\n  move.ws1: {folder: x}\n",
            7,
            "destinations.move.ws1",
            "C-MOVE queues of the modalities table",
        )

    def test_folder_inside_the_spool(self) -> None:
        """A folder destination in the spool folder is refused at its folder key."""
        self.assertOneError(
            MINIMAL + "destinations:\n  f:\n    folder: spool/out\n",
            8,
            "destinations.f.folder",
            "is inside the spool",
        )

    def test_folder_next_to_the_spool_is_fine(self) -> None:
        """A sibling folder whose name starts like the spool's is not inside it."""
        config = load_config_text(
            MINIMAL + "destinations:\n  f: {folder: spool2}\n", "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.destinations[0].path, os.path.join(BASE_DIR, "spool2"))

    def test_mixed_kinds(self) -> None:
        """folder with ae_title/host is refused, naming the destination and the keys."""
        error = self.assertOneError(
            MINIMAL + "destinations:\n  both:\n    folder: x\n    ae_title: A\n    host: h\n",
            7,
            "destinations.both",
            "destination 'both' mixes a folder destination (folder) "
            "with DICOM keys (ae_title, host)",
        )
        self.assertIn("give either folder: or ae_title, host and port", error.message)

    def test_neither_kind(self) -> None:
        """A destination with no kind keys is refused, naming it."""
        self.assertOneError(
            MINIMAL + "destinations:\n  nothing:\n    batch_size: 5\n",
            7,
            "destinations.nothing",
            "destination 'nothing' is neither a folder (folder:) nor a DICOM AE",
        )

    def test_destination_must_be_a_mapping(self) -> None:
        """A destination given as a string says a mapping was expected."""
        self.assertOneError(
            MINIMAL + "destinations:\n  d: ../out\n", 7, "destinations.d", "expected a mapping"
        )

    def test_incomplete_dicom_destination(self) -> None:
        """A DICOM destination without a port reports the missing key."""
        self.assertOneError(
            MINIMAL + "destinations:\n  pacs:\n    ae_title: P\n    host: h\n",
            8,
            "destinations.pacs.port",
            "required key is missing",
        )

    def test_unknown_key_gets_a_suggestion(self) -> None:
        """A misspelt key in a destination names the key it probably meant."""
        error = self.assertOneError(
            _dicom("    max_asociations: 2\n"),
            11,
            "destinations.pacs.max_asociations",
            "unknown key 'max_asociations'",
        )
        self.assertIn("did you mean 'max_associations'?", error.message)

    def test_dicom_key_in_folder_destination(self) -> None:
        """A DICOM-only key in a folder destination says which kind it belongs to."""
        self.assertOneError(
            MINIMAL + "destinations:\n  f:\n    folder: x\n    batch_size: 3\n",
            9,
            "destinations.f.batch_size",
            "'batch_size' applies only to DICOM destinations",
        )

    def test_folder_key_in_dicom_destination(self) -> None:
        """A folder-only key in a DICOM destination says which kind it belongs to."""
        self.assertOneError(
            _dicom("    pattern: x\n"),
            11,
            "destinations.pacs.pattern",
            "'pattern' applies only to folder destinations",
        )

    def test_unknown_key_in_timeouts(self) -> None:
        """A misspelt timeout names the known ones."""
        error = self.assertOneError(
            _dicom("    timeouts: {dimse: 1s, conect: 1s}\n"),
            11,
            "destinations.pacs.timeouts.conect",
            "unknown key",
        )
        self.assertIn("did you mean 'connect'?", error.message)

    def test_called_ae_title_validated(self) -> None:
        """The called AE title obeys VR AE: at most 16 characters."""
        self.assertOneError(
            _dicom().replace("ae_title: PACS", "ae_title: PACS_WITH_A_LONG_NAME"),
            8,
            "destinations.pacs.ae_title",
            "at most 16 characters",
        )

    def test_calling_ae_title_validated(self) -> None:
        """The calling AE title obeys VR AE: no backslash."""
        self.assertOneError(
            _dicom('    calling_ae_title: "A\\\\B"\n'),
            11,
            "destinations.pacs.calling_ae_title",
            "other than backslash",
        )

    def test_port_range(self) -> None:
        """A destination port is 1 to 65535: 0 is refused here."""
        for port, line in (("0", 10), ("65536", 10)):
            self.assertOneError(
                _dicom().replace("port: 104", f"port: {port}"),
                line,
                "destinations.pacs.port",
                "must be an integer between 1 and 65535",
            )

    def test_max_associations_range(self) -> None:
        """max_associations is 1 to 64."""
        for value in ("0", "65"):
            self.assertOneError(
                _dicom(f"    max_associations: {value}\n"),
                11,
                "destinations.pacs.max_associations",
                "between 1 and 64",
            )

    def test_batch_size_range(self) -> None:
        """batch_size is 1 to 10000."""
        for value in ("0", "10001"):
            self.assertOneError(
                _dicom(f"    batch_size: {value}\n"),
                11,
                "destinations.pacs.batch_size",
                "between 1 and 10000",
            )

    def test_bad_duration(self) -> None:
        """An idle_release with an unknown unit is located."""
        self.assertOneError(
            _dicom("    idle_release: 5x\n"),
            11,
            "destinations.pacs.idle_release",
            "invalid duration '5x'",
        )

    def test_zero_timeout(self) -> None:
        """A zero connect timeout is refused (it would never connect)."""
        self.assertOneError(
            _dicom("    timeouts: {connect: 0}\n"),
            11,
            "destinations.pacs.timeouts.connect",
            "must be more than 0",
        )


class RetryAndCircuitErrorTests(LoadTestCase):
    """The retry policy and circuit breaker are bounded."""

    def test_jitter_range(self) -> None:
        """Jitter outside [0, 1] is refused."""
        for value in ("1.5", "-0.1"):
            self.assertOneError(
                _dicom(f"    retry: {{jitter: {value}}}\n"),
                11,
                "destinations.pacs.retry.jitter",
                "must be a number between 0 and 1",
            )

    def test_multiplier_at_least_one(self) -> None:
        """A multiplier below 1 (shrinking delays) is refused."""
        self.assertOneError(
            _dicom("    retry: {multiplier: 0.5}\n"),
            11,
            "destinations.pacs.retry.multiplier",
            "must be a number of at least 1, got 0.5",
        )

    def test_multiplier_not_boolean_or_infinite(self) -> None:
        """true and .inf are not multipliers."""
        self.assertOneError(
            _dicom("    retry: {multiplier: true}\n"),
            11,
            "destinations.pacs.retry.multiplier",
            "expected a number of at least 1, got a boolean",
        )
        self.assertOneError(
            _dicom("    retry: {multiplier: .inf}\n"),
            11,
            "destinations.pacs.retry.multiplier",
            "must be a finite number",
        )

    def test_initial_delay_above_max_delay(self) -> None:
        """initial_delay greater than max_delay is refused at initial_delay's line."""
        self.assertOneError(
            _dicom("    retry:\n      max_delay: 1m\n      initial_delay: 2m\n"),
            13,
            "destinations.pacs.retry.initial_delay",
            "initial_delay (120s) must not exceed max_delay (60s)",
        )

    def test_initial_delay_above_default_max_delay(self) -> None:
        """initial_delay alone is checked against the default max_delay."""
        self.assertOneError(
            _dicom("    retry: {initial_delay: 10m}\n"),
            11,
            "destinations.pacs.retry.initial_delay",
            "must not exceed max_delay (300s)",
        )

    def test_max_delay_below_default_initial_delay(self) -> None:
        """max_delay alone below the default initial_delay is refused at max_delay."""
        self.assertOneError(
            _dicom("    retry: {max_delay: 500ms}\n"),
            11,
            "destinations.pacs.retry.max_delay",
            "initial_delay (1s) must not exceed max_delay (0.5s)",
        )

    def test_attempts_at_least_one(self) -> None:
        """max_attempts and unknown_status_attempts are at least 1."""
        for key in ("max_attempts", "unknown_status_attempts"):
            self.assertOneError(
                _dicom(f"    retry: {{{key}: 0}}\n"),
                11,
                f"destinations.pacs.retry.{key}",
                "of at least 1",
            )

    def test_circuit_failures_at_least_one(self) -> None:
        """circuit.failures of 0 is refused, in folder destinations too."""
        self.assertOneError(
            WITH_FOLDER.replace("{folder: out}", "{folder: out, circuit: {failures: 0}}"),
            7,
            "destinations.archive.circuit.failures",
            "must be an integer of at least 1, got 0",
        )


class PatternErrorTests(LoadTestCase):
    """A folder pattern cannot leave the folder or use unknown fields."""

    def pattern_error(self, pattern: str, fragment: str) -> ConfigError:
        """Assert that a folder destination with ``pattern`` has one pattern error.

        :param pattern: The pattern, written as a double-quoted YAML string.
        :param fragment: Text the message must contain.
        :returns: The error.
        """
        text = MINIMAL + f'destinations:\n  f:\n    folder: out\n    pattern: "{pattern}"\n'
        return self.assertOneError(text, 9, "destinations.f.pattern", fragment)

    def test_unknown_field(self) -> None:
        """An unknown field gets a suggestion."""
        error = self.pattern_error("{SeriesUID}/{SOPInstanceUID}.dcm", "unknown field {SeriesUID}")
        self.assertIn("{SeriesInstanceUID}", error.message)

    def test_unrelated_field_lists_allowed_ones(self) -> None:
        """A field with no near miss lists the allowed fields."""
        error = self.pattern_error("{Foo}.dcm", "unknown field {Foo}")
        self.assertIn("{calling_ae_title}", error.message)

    def test_absolute_pattern(self) -> None:
        """A pattern starting with / is refused."""
        self.pattern_error("/tmp/{SOPInstanceUID}.dcm", "must be a relative path")

    def test_windows_absolute_pattern(self) -> None:
        """A drive letter or a backslash start is refused too."""
        self.pattern_error("C:/{SOPInstanceUID}.dcm", "must be a relative path")
        self.pattern_error("\\\\\\\\server/{SOPInstanceUID}.dcm", "must be a relative path")

    def test_parent_components(self) -> None:
        """A '..' component, with either separator, is refused."""
        self.pattern_error("{StudyInstanceUID}/../{SOPInstanceUID}.dcm", "'..' components")
        self.pattern_error("..\\\\{SOPInstanceUID}.dcm", "'..' components")

    def test_empty_pattern(self) -> None:
        """An empty pattern is refused."""
        self.pattern_error("", "must not be empty")

    def test_pattern_naming_a_folder(self) -> None:
        """A pattern ending in / names no file."""
        self.pattern_error("{StudyInstanceUID}/", "must end with a file name")

    def test_unbalanced_brace(self) -> None:
        """A lone brace is refused with the escape to use."""
        error = self.pattern_error("{StudyInstanceUID/x.dcm", "invalid pattern")
        self.assertIn("{{ and }}", error.message)

    def test_format_spec(self) -> None:
        """Format specifications are not part of the pattern language."""
        self.pattern_error("{SOPInstanceUID!r}.dcm", "format specifications")

    def test_several_problems_are_all_reported(self) -> None:
        """An absolute pattern with an unknown field gives two errors."""
        errors = self.errors(
            MINIMAL + 'destinations:\n  f: {folder: out, pattern: "/{Nope}.dcm"}\n'
        )
        self.assertEqual(len(errors), 2)
        self.assertEqual({error.key_path for error in errors}, {"destinations.f.pattern"})


class RouteErrorTests(LoadTestCase):
    """Route mistakes are located, and cross-checked against the destinations."""

    def test_routes_must_be_a_list(self) -> None:
        """A single route mapping instead of a list is refused."""
        self.assertOneError(
            MINIMAL + "routes: {name: a, forward: [b]}\n", 6, "routes", "expected a list"
        )

    def test_unknown_destination_with_suggestion(self) -> None:
        """A misspelt destination is named with the one probably meant (the brief's example)."""
        text = (
            MINIMAL
            + "destinations:\n"
            + "  archive: {folder: a}\n"
            + "  backup: {folder: b}\n"
            + "routes:\n"
            + "  - {name: r0, forward: [archive]}\n"
            + "  - {name: r1, forward: [backup]}\n"
            + "  - name: r2\n"
            + "    forward:\n"
            + "      - backup\n"
            + "      - archve\n"
        )
        error = self.assertOneError(
            text,
            15,
            "routes[2].forward[1]",
            "unknown destination 'archve'; did you mean 'archive'?",
        )
        self.assertEqual(
            str(error),
            "gw.yaml:15: routes[2].forward[1]: "
            "unknown destination 'archve'; did you mean 'archive'?",
        )

    def test_unknown_destination_lists_configured_ones(self) -> None:
        """With no near miss, the configured destinations are listed."""
        self.assertOneError(
            WITH_FOLDER + "  - {name: x, forward: [zzz]}\n",
            10,
            "routes[1].forward[0]",
            "unknown destination 'zzz'; configured destinations: archive",
        )

    def test_unknown_destination_without_destinations(self) -> None:
        """With no destinations at all, the message says so."""
        self.assertOneError(
            MINIMAL + "routes:\n  - {name: x, forward: [a]}\n",
            7,
            "routes[0].forward[0]",
            "no destinations are configured",
        )

    def test_invalid_destinations_do_not_cascade(self) -> None:
        """When destinations is unreadable, routes naming them add no errors."""
        errors = self.errors(
            MINIMAL + "destinations: [archive]\nroutes:\n  - {name: x, forward: [archive]}\n"
        )
        self.assertEqual([error.key_path for error in errors], ["destinations"])

    def test_invalid_destination_is_still_a_known_name(self) -> None:
        """A route naming a destination that has an error gets no second error."""
        errors = self.errors(
            WITH_FOLDER.replace("{folder: out}", "{folder: out, batch: 1}")
        )
        self.assertEqual([error.key_path for error in errors], ["destinations.archive.batch"])

    def test_missing_name_and_forward(self) -> None:
        """A route without name and forward reports both at the route's line."""
        errors = self.errors(WITH_FOLDER + "  - {}\n")
        self.assertEqual(
            [(error.line, error.key_path, error.message) for error in errors],
            [
                (10, "routes[1].name", "required key is missing"),
                (10, "routes[1]", "a route needs 'forward' (a list of destinations), 'drop: true' or 'reject: STATUS'"),
            ],
        )

    def test_empty_forward(self) -> None:
        """A route forwarding nowhere is refused."""
        self.assertOneError(
            WITH_FOLDER + "  - {name: x, forward: []}\n",
            10,
            "routes[1].forward",
            "must name at least one destination",
        )

    def test_destination_listed_twice(self) -> None:
        """A destination named twice in one route would be sent twice: refused."""
        self.assertOneError(
            WITH_FOLDER + "  - name: x\n    forward:\n      - archive\n      - archive\n",
            13,
            "routes[1].forward[1]",
            "destination 'archive' is already listed (routes[1].forward[0])",
        )

    def test_duplicate_route_name(self) -> None:
        """A second route with the same name is refused, pointing at the first."""
        self.assertOneError(
            WITH_FOLDER + "  - {name: everything, forward: [archive]}\n",
            10,
            "routes[1].name",
            "duplicate route name 'everything' (first defined at gw.yaml:9)",
        )

    def test_unknown_route_key(self) -> None:
        """A misspelt route key gets a suggestion."""
        error = self.assertOneError(
            WITH_FOLDER + "  - name: x\n    forward: [archive]\n    nmae: y\n",
            12,
            "routes[1].nmae",
            "unknown key 'nmae'",
        )
        self.assertIn("did you mean 'name'?", error.message)

    def test_rule_keys_are_compiled_and_checked(self) -> None:
        """match, morph and reject of the wrong shape are located errors; drop and reject forward nothing."""
        for key, fragment in (
            ("match", "expected a mapping"),
            ("morph", "list"),
            ("reject", "must be a C-STORE status"),
        ):
            self.assertOneError(
                WITH_FOLDER + f"  - name: x\n    forward: [archive]\n    {key}: true\n",
                12,
                f"routes[1].{key}",
                fragment,
            )
        self.assertOneError(
            WITH_FOLDER + "  - name: x\n    forward: [archive]\n    drop: true\n",
            11,
            "routes[1].forward",
            "forwards nothing",
        )
        self.assertOneError(
            WITH_FOLDER + "  - name: x\n    reject: 0x0001\n",
            11,
            "routes[1].reject",
            "not a failure status",
        )

    def test_rule_routes_load(self) -> None:
        """A route with match, morph and final, a drop route and a reject route load as written."""
        config = self.load(
            WITH_FOLDER
            + "  - name: ct\n    match: {Modality: CT}\n    morph: [{delete: [PatientBirthDate]}]\n"
            + "    forward: [archive]\n    final: true\n"
            + "  - {name: sr, match: {Modality: SR}, drop: true}\n"
            + "  - {name: us, match: {Modality: US}, reject: 0xA900}\n"
        )
        ct, sr, us = config.routes[1:]
        self.assertTrue(ct.final)
        self.assertIsNotNone(ct.match)
        self.assertIsNotNone(ct.morph)
        self.assertEqual((sr.drop, sr.forward), (True, ()))
        self.assertEqual(us.reject, 0xA900)


class SectionErrorTests(LoadTestCase):
    """Errors in spool, duplicates, retention, queue and route_files."""

    def test_bad_min_free(self) -> None:
        """An unknown size unit in min_free is located."""
        self.assertOneError(
            MINIMAL.replace("spool: spool", "spool:\n  path: s\n  min_free: 5XB"),
            7,
            "spool.min_free",
            "unknown size unit 'XB'",
        )

    def test_negative_resume_margin(self) -> None:
        """A negative margin is refused."""
        self.assertOneError(
            MINIMAL.replace("spool: spool", "spool:\n  path: s\n  resume_margin: -1MB"),
            7,
            "spool.resume_margin",
            "must not be negative",
        )

    def test_unknown_spool_key(self) -> None:
        """A misspelt spool key gets a suggestion."""
        error = self.assertOneError(
            MINIMAL.replace("spool: spool", "spool:\n  path: s\n  min_fre: 1GB"),
            7,
            "spool.min_fre",
            "unknown key",
        )
        self.assertIn("did you mean 'min_free'?", error.message)

    def test_negative_window(self) -> None:
        """A negative duplicate window is refused."""
        self.assertOneError(
            MINIMAL + "duplicates:\n  window: -1h\n",
            7,
            "duplicates.window",
            "must not be negative",
        )

    def test_bad_keep_delivered(self) -> None:
        """A retention that is not a duration is refused."""
        self.assertOneError(
            MINIMAL + "retention:\n  keep_delivered: forever\n",
            7,
            "retention.keep_delivered",
            "invalid duration 'forever'",
        )

    def test_unknown_key_in_duplicates(self) -> None:
        """A misspelt key in duplicates gets a suggestion."""
        error = self.assertOneError(
            MINIMAL + "duplicates:\n  windw: 1h\n", 7, "duplicates.windw", "unknown key"
        )
        self.assertIn("did you mean 'window'?", error.message)

    def test_empty_queue_path(self) -> None:
        """An empty queue path is refused."""
        self.assertOneError(
            MINIMAL + 'queue: {path: ""}\n', 6, "queue.path", "must not be empty"
        )

    def test_route_files_must_be_a_list(self) -> None:
        """A single pattern must still be written as a list."""
        self.assertOneError(
            MINIMAL + 'route_files: "r/*.yaml"\n', 6, "route_files", "expected a list"
        )

    def test_missing_plain_route_file(self) -> None:
        """A route file named without glob characters must exist."""
        error = self.assertOneError(
            MINIMAL + "route_files:\n  - ../routes/*.yaml\n  - ../routes/ct.yaml\n",
            8,
            "route_files[1]",
            "route file '../routes/ct.yaml' does not exist",
        )
        self.assertIn(os.path.join(os.path.dirname(BASE_DIR), "routes", "ct.yaml"), error.message)

    def test_glob_matching_nothing_is_fine(self) -> None:
        """A pattern matching no file adds no route and no error."""
        config = load_config_text(
            MINIMAL + 'route_files: ["../nowhere/*.yaml"]\n', "gw.yaml", BASE_DIR
        )
        self.assertEqual(config.routes, ())


class RouteFileTests(SynchronousTestCase):
    """Route files on disk: loaded in order, and errors name them."""

    def setUp(self) -> None:
        """Make a tree with etc/gw.yaml and an empty routes/ folder."""
        self.root = self.mktemp()
        os.makedirs(os.path.join(self.root, "etc"))
        os.makedirs(os.path.join(self.root, "routes"))
        self.config_path = os.path.join(self.root, "etc", "gw.yaml")

    def write(self, relative: str, text: str) -> str:
        """Write a file under the tree's root.

        :param relative: Its path relative to the root.
        :param text: Its contents.
        :returns: Its path.
        """
        path = os.path.join(self.root, relative)
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        return path

    def write_config(self, extra: str = "") -> None:
        """Write etc/gw.yaml with a folder destination, one route and route files.

        :param extra: Text appended to the file (after line 8).
        """
        self.write(
            os.path.join("etc", "gw.yaml"),
            "ae_title: GW\n"
            "listen: [{host: 127.0.0.1, port: 0}]\n"
            "spool: ../var/spool\n"
            "destinations:\n"
            "  archive: {folder: ../var/archive}\n"
            "routes:\n"
            "  - {name: main, forward: [archive]}\n"
            'route_files: ["../routes/*.yaml"]\n' + extra,
        )

    def load_errors(self) -> list[ConfigError]:
        """Load the configuration, which must fail.

        :returns: The errors.
        """
        return self.assertRaises(ConfigErrors, load_config, self.config_path).errors

    def test_routes_from_files_follow_the_main_ones(self) -> None:
        """Route files are read in sorted order, after the main file's routes."""
        self.write_config()
        self.write("routes/b.yaml", "- name: from-b\n  forward: [archive]\n")
        self.write("routes/a.yaml", "# header\n- name: from-a\n  forward: [archive]\n")
        config = load_config(self.config_path)
        self.assertEqual([route.name for route in config.routes], ["main", "from-a", "from-b"])
        shown = os.path.join(self.root, "routes", "a.yaml")
        self.assertEqual(config.routes[1].origin, f"{shown}:2")

    def test_empty_route_file_adds_nothing(self) -> None:
        """A route file with every line commented out is valid and adds no route."""
        self.write_config()
        self.write("routes/example.yaml", "# - name: x\n#   forward: [archive]\n")
        self.assertEqual(len(load_config(self.config_path).routes), 1)

    def test_error_in_route_file_names_that_file(self) -> None:
        """An unknown destination in a route file names the file, its line and the key path."""
        self.write_config()
        self.write("routes/ct.yaml", "- name: ct\n  forward:\n    - archive\n    - archve\n")
        [error] = self.load_errors()
        shown = os.path.join(self.root, "routes", "ct.yaml")
        self.assertEqual(
            (error.file, error.line, error.key_path), (shown, 4, "routes[0].forward[1]")
        )
        self.assertIn("did you mean 'archive'?", error.message)

    def test_route_file_named_relative_to_the_config_as_given(self) -> None:
        """With a relative configuration path, route files are shown relative the same way."""
        self.write_config()
        self.write("routes/ct.yaml", "- {name: ct, forward: [nowhere]}\n")
        relative = os.path.relpath(self.config_path)
        [error] = self.assertRaises(ConfigErrors, load_config, relative).errors
        self.assertEqual(error.file, os.path.relpath(os.path.join(self.root, "routes", "ct.yaml")))

    def test_duplicate_route_name_across_files(self) -> None:
        """A route file reusing a main-file route name points at the first definition."""
        self.write_config()
        self.write(
            "routes/x.yaml",
            "- name: ok\n  forward: [archive]\n- name: main\n  forward: [archive]\n",
        )
        [error] = self.load_errors()
        self.assertEqual(
            (error.file, error.line, error.key_path),
            (os.path.join(self.root, "routes", "x.yaml"), 3, "routes[1].name"),
        )
        self.assertIn(f"first defined at {self.config_path}:7", error.message)

    def test_rule_errors_in_route_files_name_that_file(self) -> None:
        """A bad condition in a route file is an error located in that file."""
        self.write_config()
        self.write("routes/m.yaml", "- name: m\n  forward: [archive]\n  match: {Modalty: CT}\n")
        [error] = self.load_errors()
        self.assertEqual((error.line, error.key_path), (3, "routes[0].match.Modalty"))
        self.assertIn("did you mean Modality", error.message)
        self.assertTrue(error.file.endswith("m.yaml"))

    def test_route_file_must_hold_a_list(self) -> None:
        """A route file holding a mapping is refused at its first line."""
        self.write_config()
        self.write("routes/bad.yaml", "name: x\nforward: [archive]\n")
        [error] = self.load_errors()
        self.assertEqual(
            (error.file, error.line, error.key_path),
            (os.path.join(self.root, "routes", "bad.yaml"), 1, ""),
        )
        self.assertIn("must hold a list of routes, got a mapping", error.message)

    def test_yaml_error_in_route_file(self) -> None:
        """A syntax error in a route file names that file and line."""
        self.write_config()
        self.write("routes/bad.yaml", "- name: x\n  forward: [archive\n")
        [error] = self.load_errors()
        self.assertEqual(error.file, os.path.join(self.root, "routes", "bad.yaml"))
        self.assertIn("invalid YAML", error.message)

    def test_errors_of_both_files_are_collected_main_file_first(self) -> None:
        """Errors in the main file and a route file all appear, the main file's first."""
        self.write_config("duplicates: {window: soon}\n")
        self.write("routes/ct.yaml", "- {name: ct, forward: [nowhere]}\n")
        errors = self.load_errors()
        self.assertEqual(
            [(os.path.basename(error.file), error.line) for error in errors],
            [("gw.yaml", 9), ("ct.yaml", 1)],
        )

    def replace_in_config(self, old: str, new: str) -> None:
        """Edit the configuration file in place.

        :param old: Text to replace; it must be present.
        :param new: The replacement.
        """
        with open(self.config_path, encoding="utf-8") as stream:
            text = stream.read()
        self.assertIn(old, text)
        self.write(os.path.join("etc", "gw.yaml"), text.replace(old, new))

    def test_file_matched_twice_is_read_once(self) -> None:
        """A file matched by two patterns is not read twice (no duplicate-name error)."""
        self.write_config()
        self.replace_in_config('"../routes/*.yaml"', '"../routes/*.yaml", "../routes/a.yaml"')
        self.write("routes/a.yaml", "- {name: a, forward: [archive]}\n")
        self.assertEqual(
            [route.name for route in load_config(self.config_path).routes], ["main", "a"]
        )

    def test_config_file_matched_by_its_own_pattern_is_skipped(self) -> None:
        """route_files: ["*.yaml"] next to the configuration does not read it as routes."""
        self.write_config()
        self.replace_in_config("../routes/*.yaml", "*.yaml")
        self.assertEqual([route.name for route in load_config(self.config_path).routes], ["main"])

    def test_folders_matched_by_a_pattern_are_skipped(self) -> None:
        """A folder matched by a glob is not a route file."""
        self.write_config()
        os.makedirs(os.path.join(self.root, "routes", "old.yaml"))
        self.assertEqual(len(load_config(self.config_path).routes), 1)

    def test_plain_path_to_a_folder_is_an_error(self) -> None:
        """A route_files entry naming a folder suggests a pattern."""
        self.write_config()
        self.replace_in_config('"../routes/*.yaml"', '"../routes"')
        [error] = self.load_errors()
        self.assertEqual(
            (error.file, error.line, error.key_path), (self.config_path, 8, "route_files[0]")
        )
        self.assertIn("is a folder", error.message)

    def test_text_load_names_route_files_absolutely(self) -> None:
        """load_config_text has no file path to be relative to, so route files are absolute."""
        self.write("routes/ct.yaml", "- {name: ct, forward: [nowhere]}\n")
        errors = self.assertRaises(
            ConfigErrors,
            load_config_text,
            MINIMAL + 'route_files: ["../routes/*.yaml"]\n',
            "gw.yaml",
            os.path.join(self.root, "etc"),
        ).errors
        self.assertEqual(
            [error.file for error in errors],
            [os.path.abspath(os.path.join(self.root, "routes", "ct.yaml"))],
        )


def _uncomment_block(text: str, first_line: str) -> str:
    """Uncomment the commented-out block starting with ``first_line``.

    The block is the run of lines starting with ``"#  "`` (a commented
    indented line); each loses its leading ``#``.

    :param text: The file's text.
    :param first_line: The block's first line, exactly.
    :returns: The text with that block uncommented.
    """
    lines = text.split("\n")
    start = lines.index(first_line)
    index = start
    while index < len(lines) and lines[index].startswith("#  "):
        lines[index] = lines[index][1:]
        index += 1
    assert index - start > 1, "the block has a single line"
    return "\n".join(lines)


class ShippedForwardingConfigTests(SynchronousTestCase):
    """etc/gateway.yaml routes to a folder out of the box, and its examples are valid."""

    path = os.path.join(REPO_ROOT, "etc", "gateway.yaml")

    def test_routes_everything_to_the_archive_folder(self) -> None:
        """The shipped file has the var/archive folder destination and a route to it."""
        config = load_config(self.path)
        archive = config.destination("archive")
        self.assertIsInstance(archive, FolderDestination)
        assert isinstance(archive, FolderDestination)  # for the type checker
        self.assertEqual(archive.path, os.path.join(REPO_ROOT, "var", "archive"))
        self.assertIn(
            "archive", [name for route in config.routes for name in route.forward]
        )
        self.assertEqual(config.unused_destinations(), ())

    def test_writes_the_defaults_out(self) -> None:
        """The spool, queue, duplicates and retention blocks show the defaults."""
        config = load_config(self.path)
        self.assertEqual(config.spool, SpoolConfig(os.path.join(REPO_ROOT, "var", "spool")))
        self.assertEqual(
            config.queue_path, os.path.join(REPO_ROOT, "var", "spool", "queue.sqlite")
        )
        self.assertEqual((config.duplicate_window, config.keep_delivered), (3600.0, 0.0))

    def test_uncommented_examples_are_valid(self) -> None:
        """Uncommenting the DICOM destination and second route gives a valid configuration."""
        with open(self.path, encoding="utf-8") as stream:
            text = stream.read()
        text = _uncomment_block(text, "#  pacs:")
        text = _uncomment_block(text, "#  - name: to-pacs")
        config = load_config_text(text, "gateway.yaml", os.path.dirname(self.path))
        pacs = config.destination("pacs")
        assert isinstance(pacs, DicomDestination)
        # The example writes the defaults out.
        self.assertEqual(pacs, DicomDestination("pacs", "PACS", "pacs.example.org", 104, "DICOMGW"))
        self.assertIn(RouteConfig("to-pacs", ("pacs",), pacs_route_origin(config)), config.routes)

    def test_example_route_file_is_valid_when_uncommented(self) -> None:
        """routes/example.yaml, uncommented, is a valid route file for the pacs example."""
        folder = self.mktemp()
        os.makedirs(os.path.join(folder, "etc"))
        os.makedirs(os.path.join(folder, "routes"))
        with open(self.path, encoding="utf-8") as stream:
            text = _uncomment_block(stream.read(), "#  pacs:")
        with open(os.path.join(folder, "etc", "gateway.yaml"), "w", encoding="utf-8") as stream:
            stream.write(text)
        with open(os.path.join(REPO_ROOT, "routes", "example.yaml"), encoding="utf-8") as stream:
            example = stream.read()
        uncommented = "\n".join(
            line[2:] for line in example.split("\n") if line.startswith(("# -", "#  "))
        )
        with open(os.path.join(folder, "routes", "example.yaml"), "w", encoding="utf-8") as stream:
            stream.write(uncommented + "\n")
        config = load_config(os.path.join(folder, "etc", "gateway.yaml"))
        self.assertEqual(
            [(route.name, route.forward) for route in config.routes],
            [("everything", ("archive",)), ("example-to-pacs", ("pacs",))],
        )


def pacs_route_origin(config: GatewayConfig) -> str:
    """Find the origin of the ``to-pacs`` route, for comparing whole routes.

    :param config: The configuration.
    :returns: The route's ``file:line``.
    """
    return next(route.origin for route in config.routes if route.name == "to-pacs")


#: A valid configuration using the new sections, for mutation tests.
VALID_FORWARDING = MINIMAL.replace(
    "spool: spool", "spool: {path: sp, min_free: 1GiB, resume_margin: 1MB}"
) + _text(
    """
    duplicates: {window: 1h}
    retention: {keep_delivered: 0s}
    queue: {path: q.sqlite}
    destinations:
      pacs:
        ae_title: PACS
        host: h
        port: 104
        timeouts: {connect: 1s}
        retry: {initial_delay: 1s, max_delay: 5m, jitter: 0.2}
        circuit: {failures: 3}
      f: {folder: out, pattern: "{StudyInstanceUID}/{SOPInstanceUID}.dcm"}
    routes:
      - {name: a, forward: [pacs, f]}
    route_files: ["r/*.yaml"]
    """
)


class NeverATracebackTests(SynchronousTestCase):
    """Mutations of the new sections end in a config or in ConfigErrors."""

    def test_valid_forwarding_text_loads(self) -> None:
        """The mutation seed is itself valid."""
        config = load_config_text(VALID_FORWARDING, "gw.yaml", BASE_DIR)
        self.assertEqual(len(config.destinations), 2)

    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(min_value=0, max_value=len(VALID_FORWARDING)),
        st.integers(min_value=0, max_value=len(VALID_FORWARDING)),
        st.text(alphabet=":-[]{}*&!#'\" \n\t0123456789abc./\\", max_size=8),
    )
    def test_mutated_valid_file(self, start: int, end: int, insert: str) -> None:
        """Splicing YAML punctuation into a valid file never raises anything but ConfigErrors."""
        start, end = min(start, end), max(start, end)
        text = VALID_FORWARDING[:start] + insert + VALID_FORWARDING[end:]
        try:
            config = load_config_text(text, "gw.yaml", BASE_DIR)
        except ConfigErrors as raised:
            self.assertTrue(raised.errors)
            for error in raised.errors:
                self.assertTrue(error.message)
                self.assertNotIn("\n", str(error))
        else:
            self.assertIsInstance(config, GatewayConfig)
