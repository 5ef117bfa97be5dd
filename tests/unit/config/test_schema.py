"""Tests for :mod:`gateway.config.schema` and :mod:`gateway.config.errors`."""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.schema import (
    AcceptConfig,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    SpoolConfig,
)


class ListenerConfigTests(SynchronousTestCase):
    """ListenerConfig's defaults."""

    def test_name_defaults_to_host_and_port(self) -> None:
        """Without a name, a listener is named host:port."""
        self.assertEqual(ListenerConfig("0.0.0.0", 11112).name, "0.0.0.0:11112")

    def test_given_name_is_kept(self) -> None:
        """An explicit name wins over the default."""
        self.assertEqual(ListenerConfig("::", 104, "main").name, "main")

    def test_default_name_takes_part_in_equality(self) -> None:
        """A defaulted listener equals one given the same name explicitly."""
        self.assertEqual(ListenerConfig("h", 1), ListenerConfig("h", 1, "h:1"))


class DefaultsTests(SynchronousTestCase):
    """The documented defaults of the optional sections."""

    def test_accept_defaults(self) -> None:
        """Any calling AE is accepted; unknown SOP classes are not."""
        accept = AcceptConfig()
        self.assertEqual(accept.calling_ae_titles, ("*",))
        self.assertFalse(accept.unknown_sop_classes)

    def test_limits_defaults(self) -> None:
        """The limits have the values the configuration contract states."""
        self.assertEqual(
            LimitsConfig(),
            LimitsConfig(
                max_associations=64,
                max_pdu_length=262144,
                acse_timeout=30.0,
                dimse_timeout=60.0,
                network_timeout=120.0,
                max_instance_size=4 * 1024**3,
            ),
        )


class FrozenTests(SynchronousTestCase):
    """Configuration objects are immutable and comparable."""

    def test_config_objects_are_frozen(self) -> None:
        """Assigning to a field of any configuration class raises."""
        config = GatewayConfig(
            source="/etc/gw.yaml",
            ae_title="GW",
            listen=(ListenerConfig("h", 1),),
            accept=AcceptConfig(),
            limits=LimitsConfig(),
            spool=SpoolConfig("/var/spool"),
        )
        for obj, field in (
            (config, "ae_title"),
            (config.listen[0], "port"),
            (config.accept, "unknown_sop_classes"),
            (config.limits, "max_pdu_length"),
            (config.spool, "path"),
        ):
            self.assertRaises(dataclasses.FrozenInstanceError, setattr, obj, field, 1)

    def test_sections_compare_by_value(self) -> None:
        """Two loads with the same values compare equal, section by section."""
        self.assertEqual(LimitsConfig(acse_timeout=5.0), LimitsConfig(acse_timeout=5.0))
        self.assertNotEqual(LimitsConfig(acse_timeout=5.0), LimitsConfig())


class ConfigErrorTests(SynchronousTestCase):
    """ConfigError and ConfigErrors render for operators."""

    def test_str_has_file_line_key_and_message(self) -> None:
        """The rendering is file:line: key.path: message."""
        error = ConfigError(
            "etc/gateway.yaml",
            12,
            "limits.max_pdu_length",
            "must be an integer between 4096 and 16777216",
        )
        self.assertEqual(
            str(error),
            "etc/gateway.yaml:12: limits.max_pdu_length: "
            "must be an integer between 4096 and 16777216",
        )

    def test_str_without_line(self) -> None:
        """Without a line, the file name stands alone."""
        error = ConfigError("gw.yaml", None, "", "cannot read the configuration file")
        self.assertEqual(str(error), "gw.yaml: cannot read the configuration file")

    def test_str_without_key_path(self) -> None:
        """Without a key path, the message follows the location."""
        self.assertEqual(str(ConfigError("gw.yaml", 3, "", "bad")), "gw.yaml:3: bad")

    def test_errors_render_one_per_line(self) -> None:
        """ConfigErrors renders each error on its own line, in order."""
        errors = ConfigErrors(
            [ConfigError("a.yaml", 1, "x", "one"), ConfigError("a.yaml", 2, "y", "two")]
        )
        self.assertEqual(str(errors), "a.yaml:1: x: one\na.yaml:2: y: two")
        self.assertEqual(len(errors), 2)
        self.assertEqual([e.key_path for e in errors], ["x", "y"])

    def test_errors_is_an_exception(self) -> None:
        """ConfigErrors can be raised and caught with its errors intact."""
        error = ConfigError("a.yaml", 1, "x", "one")
        caught = self.assertRaises(ConfigErrors, _raise, ConfigErrors([error]))
        self.assertEqual(caught.errors, [error])


def _raise(exception: Exception) -> None:
    """Raise ``exception``.

    :param exception: What to raise.
    :raises Exception: Always.
    """
    raise exception
