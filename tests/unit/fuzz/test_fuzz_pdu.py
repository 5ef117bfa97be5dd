"""Fuzz the PDU framing and decoding (HARDENING R4, P01-P39): only PDUDecodeError, never a crash.

Bounded for CI by ``max_examples``; ``python bench/fuzz.py --seconds 600``
runs the same targets for longer.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.ul.framing import PDUBuffer
from gateway.ul.pdu import PDU
from tests.unit.fuzz import arbitrary, mutated, pdu_seeds, target_pdu_decode, target_pdu_stream

_SETTINGS = settings(max_examples=3000, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class PDUFuzzTests(SynchronousTestCase):
    """The framer and the decoder return PDUs or PDUDecodeError, whatever the bytes."""

    def test_seeds_decode_without_error(self) -> None:
        """Every seed PDU frames into PDUs with no error, so the mutations start from valid input."""
        for seed in pdu_seeds():
            out = PDUBuffer(max_pdata_length=16384, max_other_length=65536).feed(seed)
            self.assertTrue(out)
            self.assertTrue(all(isinstance(item, PDU) for item in out), (seed[:16], out))

    @_SETTINGS
    @given(data=mutated(pdu_seeds), chunk=st.integers(1, 300))
    def test_mutated_seeds_frame_to_pdus_or_one_final_error(self, data: bytes, chunk: int) -> None:
        """Mutated captures fed in chunks give PDUs and at most one PDUDecodeError, last."""
        target_pdu_stream(data, chunk)

    @_SETTINGS
    @given(data=arbitrary(), chunk=st.integers(1, 64))
    def test_arbitrary_bytes_frame_to_pdus_or_one_final_error(self, data: bytes, chunk: int) -> None:
        """Arbitrary bytes fed in chunks give PDUs and at most one PDUDecodeError, last."""
        target_pdu_stream(data, chunk)

    @_SETTINGS
    @given(data=mutated(pdu_seeds))
    def test_decode_raises_only_pdu_decode_error(self, data: bytes) -> None:
        """``pdu.decode`` on a mutated body returns a PDU or raises PDUDecodeError only."""
        target_pdu_decode(data)

    @_SETTINGS
    @given(pdu_type=st.integers(0, 255), body=st.binary(max_size=512))
    def test_decode_of_any_type_and_body_raises_only_pdu_decode_error(self, pdu_type: int, body: bytes) -> None:
        """``pdu.decode`` of any type byte and body returns a PDU or raises PDUDecodeError only."""
        target_pdu_decode(bytes([pdu_type]) + bytes(5) + body)
