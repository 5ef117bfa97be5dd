"""Tests for :mod:`gateway.config.schema` and :mod:`gateway.config.errors`."""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.schema import (
    AcceptConfig,
    CircuitConfig,
    DicomDestination,
    FolderDestination,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    RetryConfig,
    RouteConfig,
    SpoolConfig,
)


def _gateway(**changes: object) -> GatewayConfig:
    """Make a small GatewayConfig, with some fields changed.

    :param changes: Keyword arguments overriding the defaults used here.
    :returns: The configuration.
    """
    arguments: dict[str, object] = dict(
        source="/etc/gw.yaml",
        ae_title="GW",
        listen=(ListenerConfig("h", 1),),
        accept=AcceptConfig(),
        limits=LimitsConfig(),
        spool=SpoolConfig("/var/spool"),
    )
    arguments.update(changes)
    return GatewayConfig(**arguments)  # type: ignore[arg-type]


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


class ForwardingDefaultsTests(SynchronousTestCase):
    """The documented defaults of the store-and-forward configuration."""

    def test_retry_defaults(self) -> None:
        """Backoff from 1 s to 5 min, x2, 20% jitter; 50 attempts, 7 days, 3 unknown."""
        self.assertEqual(
            RetryConfig(),
            RetryConfig(
                initial_delay=1.0,
                max_delay=300.0,
                multiplier=2.0,
                jitter=0.2,
                max_attempts=50,
                max_age=7 * 86400.0,
                unknown_status_attempts=3,
            ),
        )

    def test_circuit_defaults(self) -> None:
        """Three consecutive destination-wide failures open the circuit."""
        self.assertEqual(CircuitConfig().failures, 3)

    def test_dicom_destination_defaults(self) -> None:
        """One association, batches of 50, the usual timers, default retry and circuit."""
        destination = DicomDestination("pacs", "PACS", "h", 104, "GW")
        self.assertEqual(
            (
                destination.max_associations,
                destination.batch_size,
                destination.idle_release,
                destination.max_pdu_length,
                destination.connect_timeout,
                destination.acse_timeout,
                destination.dimse_timeout,
            ),
            (1, 50, 5.0, 262144, 10.0, 30.0, 60.0),
        )
        self.assertEqual((destination.retry, destination.circuit), (RetryConfig(), CircuitConfig()))

    def test_folder_destination_default_pattern(self) -> None:
        """Files go to study/series/instance.dcm by default."""
        self.assertEqual(
            FolderDestination("f", "/out").pattern,
            "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        )

    def test_spool_free_space_defaults(self) -> None:
        """The floor is 512 MiB and the resume margin 256 MiB."""
        spool = SpoolConfig("/s")
        self.assertEqual(
            (spool.min_free_bytes, spool.resume_margin_bytes), (512 * 1024**2, 256 * 1024**2)
        )

    def test_gateway_forwarding_defaults(self) -> None:
        """No destinations or routes, a one-hour duplicate window, nothing retained."""
        config = _gateway()
        self.assertEqual((config.destinations, config.routes), ((), ()))
        self.assertEqual((config.duplicate_window, config.keep_delivered), (3600.0, 0.0))

    def test_queue_path_defaults_into_the_spool(self) -> None:
        """An empty queue path becomes queue.sqlite in the spool folder."""
        self.assertEqual(_gateway().queue_path, "/var/spool/queue.sqlite")

    def test_given_queue_path_is_kept(self) -> None:
        """An explicit queue path wins over the default."""
        self.assertEqual(_gateway(queue_path="/q/j.db").queue_path, "/q/j.db")


class DestinationLookupTests(SynchronousTestCase):
    """GatewayConfig.destination and unused_destinations."""

    def test_destination_by_name(self) -> None:
        """A configured destination is found by its name."""
        folder = FolderDestination("f", "/out")
        pacs = DicomDestination("pacs", "PACS", "h", 104, "GW")
        config = _gateway(destinations=(folder, pacs))
        self.assertIs(config.destination("pacs"), pacs)
        self.assertIs(config.destination("f"), folder)

    def test_unknown_destination_raises_key_error(self) -> None:
        """An unknown name raises KeyError carrying the name."""
        error = self.assertRaises(KeyError, _gateway().destination, "nope")
        self.assertEqual(error.args, ("nope",))

    def test_unused_destinations(self) -> None:
        """Destinations no route forwards to are listed in file order."""
        config = _gateway(
            destinations=(
                FolderDestination("a", "/a"),
                FolderDestination("b", "/b"),
                FolderDestination("c", "/c"),
            ),
            routes=(RouteConfig("r", ("b",)),),
        )
        self.assertEqual(config.unused_destinations(), ("a", "c"))


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
            (config, "routes"),
            (RetryConfig(), "jitter"),
            (CircuitConfig(), "failures"),
            (DicomDestination("p", "P", "h", 1, "GW"), "port"),
            (FolderDestination("f", "/f"), "pattern"),
            (RouteConfig("r", ("a",)), "forward"),
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
