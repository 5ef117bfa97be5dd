"""The validated configuration, as frozen dataclasses.

These classes are what the rest of the gateway codes against: the loader
(:mod:`gateway.config.load`) is the only place that builds them from YAML, and
it guarantees the invariants stated here (ranges checked, paths absolute,
durations in seconds, sizes in bytes). Being frozen and comparable, two loads
can be compared section by section on reload, as Buildbot's ``compare_attrs``
does, so only changed parts are restarted.

Names and fields here are a contract; new fields must come with defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ListenerConfig:
    """One address the gateway accepts associations on.

    :param host: The interface to bind (``"0.0.0.0"``, ``"::"``, a name).
    :param port: The TCP port; 0 means any free port (for tests).
    :param name: A label for logs and metrics; the loader defaults it to
        ``f"{host}:{port}"`` and keeps names unique.
    """

    host: str
    port: int
    name: str = ""

    def __post_init__(self) -> None:
        """Fill in the default name when none was given."""
        if not self.name:
            object.__setattr__(self, "name", f"{self.host}:{self.port}")


@dataclass(frozen=True)
class AcceptConfig:
    """Which associations and instances the listeners accept.

    :param calling_ae_titles: Glob patterns (``fnmatch`` syntax) of the
        calling AE titles allowed to associate; ``("*",)`` allows any.
    :param unknown_sop_classes: Whether to accept presentation contexts for
        SOP classes the gateway does not know (stored as-is when accepted).
    """

    calling_ae_titles: tuple[str, ...] = ("*",)
    unknown_sop_classes: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    """Resource limits and timers.

    :param max_associations: Concurrent inbound associations; the next one is
        rejected transient, provider-presentation, local limit (PS3.8 9.3.4).
    :param max_pdu_length: The Maximum Length we advertise and accept
        (PS3.8 D.1), 4096 to 16777216.
    :param acse_timeout: The ARTIM timer in seconds (PS3.8 9.1.5).
    :param dimse_timeout: Seconds to wait for a DIMSE response.
    :param network_timeout: Seconds an association may stay idle.
    :param max_instance_size: The largest instance, in bytes, accepted on
        receive; larger ones get a permanent failure status.
    """

    max_associations: int = 64
    max_pdu_length: int = 262144
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    max_instance_size: int = 4 * 1024**3


@dataclass(frozen=True)
class SpoolConfig:
    """Where received instances are written before they are acknowledged.

    :param path: An absolute directory path (relative paths in the file are
        resolved against the configuration file's folder).
    """

    path: str


@dataclass(frozen=True)
class GatewayConfig:
    """The whole validated configuration.

    :param source: The configuration file's absolute path (or, for
        configurations loaded from text, the name given for it).
    :param ae_title: Our AE title, leading and trailing spaces removed
        (they are not significant, PS3.5 Table 6.2-1).
    :param listen: The listeners, at least one, with unique names.
    :param accept: The acceptance policy.
    :param limits: Resource limits and timers.
    :param spool: The spool location.
    """

    source: str
    ae_title: str
    listen: tuple[ListenerConfig, ...]
    accept: AcceptConfig
    limits: LimitsConfig
    spool: SpoolConfig
