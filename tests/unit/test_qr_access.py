"""Tests for :mod:`gateway.qr.access`: who may query and retrieve, and which move destinations they may name (issue 16)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import (
    AcceptConfig,
    DicomDestination,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    ModalityConfig,
    QueryConfig,
    RetrieveConfig,
    SpoolConfig,
)
from gateway.qr.access import MOVE_DESTINATION_UNKNOWN, allowed, move_destination
from gateway.receive import AssociationInfo

#: A listener with its own, narrowed query and retrieve; one using the top level.
NARROW = ListenerConfig(
    "0.0.0.0",
    11112,
    name="narrow",
    query=QueryConfig(sources=("archive",), allowed_ae_titles=("WS_*",)),
    retrieve=RetrieveConfig(sources=("archive",), allowed_destinations=("ws*",), allowed_ae_titles=("WS_?",)),
)
OPEN = ListenerConfig("0.0.0.0", 11113, name="open")


def config(query: QueryConfig | None = None, retrieve: RetrieveConfig | None = None) -> GatewayConfig:
    """A gateway with the two listeners, two modalities and optional top-level sections."""
    return GatewayConfig(
        source="test.yaml",
        ae_title="DICOMGW",
        listen=(NARROW, OPEN),
        accept=AcceptConfig(),
        limits=LimitsConfig(),
        spool=SpoolConfig("/nonexistent"),
        destinations=(DicomDestination("archive", "ARC", "10.0.0.20", 104, "DICOMGW"),),
        modalities=(
            ModalityConfig(name="ws1", ae_title="WS_1", host="10.0.0.31", port=104),
            ModalityConfig(name="research", ae_title="RESEARCH", host="10.0.0.32", port=104),
        ),
        query=query,
        retrieve=retrieve,
    )


def info(calling: str, listener: str = "narrow") -> AssociationInfo:
    """An association from ``calling`` on ``listener``."""
    return AssociationInfo("a1", "10.0.0.5", calling, "DICOMGW", listener, {})


class AllowedTests(SynchronousTestCase):
    """:func:`allowed` per verb."""

    def test_not_offered_without_a_section(self) -> None:
        """No top-level section and none on the listener: every verb refused, the reason names the key."""
        for verb, key in (("find", "query"), ("move", "retrieve"), ("get", "retrieve")):
            ok, reason = allowed(config(), info("WS_1", "open"), verb)
            self.assertFalse(ok)
            self.assertIn(f"{key} is not offered on listener open", reason)

    def test_top_level_allows_every_ae(self) -> None:
        """A top-level section without ``allowed_ae_titles`` allows whoever got in."""
        cfg = config(QueryConfig(sources=("archive",)), RetrieveConfig(sources=("archive",)))
        for verb in ("find", "move", "get"):
            self.assertEqual(allowed(cfg, info("ANYONE", "open"), verb), (True, ""))

    def test_allowed_ae_titles_narrow_per_verb(self) -> None:
        """``query.allowed_ae_titles`` and ``retrieve.allowed_ae_titles`` are checked separately (case-sensitive)."""
        cfg = config()
        self.assertEqual(allowed(cfg, info("WS_12"), "find"), (True, ""))
        ok, reason = allowed(cfg, info("WS_12"), "move")
        self.assertEqual((ok, reason), (False, "calling AE title not in retrieve.allowed_ae_titles"))
        self.assertEqual(allowed(cfg, info("WS_1 "), "get"), (True, ""))
        self.assertFalse(allowed(cfg, info("ws_1"), "find")[0])

    def test_unknown_verb_is_a_programming_error(self) -> None:
        """A verb other than find/move/get raises (scp.py never passes one)."""
        self.assertRaises(ValueError, allowed, config(), info("WS_1"), "echo")


class MoveDestinationTests(SynchronousTestCase):
    """:func:`move_destination`: the modalities table within ``allowed_destinations``."""

    def test_known_and_allowed(self) -> None:
        """An AE of the table matching the listener's globs resolves to its entry (trailing spaces ignored)."""
        modality, reason = move_destination(config(), info("WS_1"), "WS_1  ")
        assert modality is not None
        self.assertEqual((modality.name, reason), ("ws1", ""))

    def test_unknown_ae(self) -> None:
        """An AE not in the table: ``None`` (answered 0xA801), the reason says so."""
        self.assertEqual(MOVE_DESTINATION_UNKNOWN, 0xA801)
        self.assertEqual(move_destination(config(), info("WS_1"), "NOBODY"), (None, "move destination is not in the modalities table"))

    def test_known_but_not_allowed(self) -> None:
        """An AE of the table outside ``allowed_destinations``: refused like an unknown one, the reason names it."""
        modality, reason = move_destination(config(), info("WS_1"), "RESEARCH")
        self.assertIsNone(modality)
        self.assertIn("modalities.research is not in retrieve.allowed_destinations", reason)

    def test_empty_globs_allow_every_entry(self) -> None:
        """Without ``allowed_destinations`` every entry of the table may be named."""
        cfg = config(retrieve=RetrieveConfig(sources=("archive",)))
        modality, _ = move_destination(cfg, info("X", "open"), "RESEARCH")
        assert modality is not None
        self.assertEqual(modality.name, "research")
