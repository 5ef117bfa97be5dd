"""Fuzz the DIMSE reassembler and command decoder (HARDENING R2, D20): only DIMSEProtocolError.

Bounded for CI by ``max_examples``; ``python bench/fuzz.py --seconds 600``
runs the same targets for longer.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from twisted.trial.unittest import SynchronousTestCase

from gateway.dimse.commands import decode_command
from tests.unit.fuzz import (
    arbitrary,
    command_seeds,
    mutated,
    reassembler_seeds,
    target_decode_command,
    target_reassembler,
)

_SETTINGS = settings(max_examples=4000, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class DIMSEFuzzTests(SynchronousTestCase):
    """The reassembler and the command decoder raise nothing but DIMSEProtocolError."""

    def test_command_seeds_decode(self) -> None:
        """Every seed command set decodes, so the mutations start from valid input."""
        for seed in command_seeds():
            self.assertIsNotNone(decode_command(seed))

    @_SETTINGS
    @given(data=mutated(command_seeds))
    def test_mutated_command_sets_raise_only_dimse_protocol_error(self, data: bytes) -> None:
        """A mutated command set decodes or raises DIMSEProtocolError only."""
        target_decode_command(data)

    @_SETTINGS
    @given(data=arbitrary())
    def test_arbitrary_command_bytes_raise_only_dimse_protocol_error(self, data: bytes) -> None:
        """Arbitrary bytes decode as a command or raise DIMSEProtocolError only."""
        target_decode_command(data)

    @_SETTINGS
    @given(data=mutated(reassembler_seeds))
    def test_mutated_pdv_sequences_raise_only_dimse_protocol_error(self, data: bytes) -> None:
        """Mutated PDV sequences give events or DIMSEProtocolError, and the reassembler stays broken after one."""
        target_reassembler(data)

    @_SETTINGS
    @given(data=arbitrary())
    def test_arbitrary_pdv_sequences_raise_only_dimse_protocol_error(self, data: bytes) -> None:
        """Arbitrary PDV sequences give events or DIMSEProtocolError only."""
        target_reassembler(data)
