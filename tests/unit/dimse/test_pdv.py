"""Tests for :mod:`gateway.dimse.pdv` (PS3.8 Annex E; HARDENING P15, P24, P25, F09)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.dimse.commands import CEchoRQ, CStoreRQ, decode_command, encode_command
from gateway.dimse.errors import DIMSEProtocolError
from gateway.dimse.pdv import (
    MAX_COMMAND_LENGTH,
    CommandComplete,
    DatasetFragment,
    Reassembler,
    fragment,
    fragment_command,
    max_fragment_size,
)
from gateway.ul.pdu import PDV

CT = "1.2.840.10008.5.1.4.1.1.2"
STORE = encode_command(CStoreRQ(1, CT, "1.2.3.4"))
ECHO = encode_command(CEchoRQ(2, "1.2.840.10008.1.1"))
STORE_NO_DATA = encode_command(CStoreRQ(1, CT, "1.2.3.4", has_dataset=False))

CMD, CMD_LAST, DATA, DATA_LAST = 0x01, 0x03, 0x00, 0x02


class ReassemblyTests(SynchronousTestCase):
    """The happy paths of the Reassembler."""

    def test_single_fragment_command_without_dataset(self) -> None:
        """A one-PDV C-ECHO-RQ gives one CommandComplete and leaves the reassembler idle."""
        r = Reassembler()
        events = r.feed(PDV(1, CMD_LAST, ECHO))
        self.assertEqual(events, [CommandComplete(1, decode_command(ECHO), False)])
        self.assertTrue(r.idle)

    def test_fragmented_command_is_joined(self) -> None:
        """Command fragments are joined and decoded when the last one arrives."""
        r = Reassembler()
        pdvs = fragment(3, STORE, 10, command=True)
        self.assertGreater(len(pdvs), 2)
        events = [e for p in pdvs for e in r.feed(p)]
        self.assertEqual(events, [CommandComplete(3, decode_command(STORE), True)])
        self.assertFalse(r.idle)

    def test_each_data_fragment_is_emitted_at_once(self) -> None:
        """Every data PDV yields one DatasetFragment with the same bytes object, not a buffer."""
        r = Reassembler()
        r.feed(PDV(5, CMD_LAST, STORE))
        chunk = b"ab" * 8
        first = r.feed(PDV(5, DATA, chunk))
        self.assertEqual(first, [DatasetFragment(5, chunk, False)])
        self.assertIs(first[0].data, chunk)
        self.assertEqual(r.feed(PDV(5, DATA_LAST, b"cd")), [DatasetFragment(5, b"cd", True)])
        self.assertTrue(r.idle)

    def test_second_message_on_another_context_after_completion(self) -> None:
        """After a complete message, the next one may use a different context."""
        r = Reassembler()
        r.feed(PDV(1, CMD_LAST, STORE))
        r.feed(PDV(1, DATA_LAST, b"xx"))
        events = r.feed(PDV(3, CMD_LAST, ECHO))
        self.assertEqual(events[0].context_id, 3)

    def test_reserved_control_bits_are_ignored(self) -> None:
        """Bits 2-7 of the control header are never checked (PS3.8 E.2, HARDENING P25)."""
        r = Reassembler()
        events = r.feed(PDV(1, 0xFC | CMD_LAST, ECHO))
        self.assertIsInstance(events[0], CommandComplete)

    def test_empty_data_fragment_is_allowed(self) -> None:
        """A zero-length data fragment is even and passes through."""
        r = Reassembler()
        r.feed(PDV(1, CMD_LAST, STORE))
        self.assertEqual(r.feed(PDV(1, DATA, b"")), [DatasetFragment(1, b"", False)])


class EncapsulationErrorTests(SynchronousTestCase):
    """Annex E violations raise DIMSEProtocolError (HARDENING P24 -> A-ABORT(0,0))."""

    def assert_error(self, r: Reassembler, pdv: PDV, fragment_text: str) -> None:
        """Feeding ``pdv`` raises DIMSEProtocolError mentioning ``fragment_text``."""
        exc = self.assertRaises(DIMSEProtocolError, r.feed, pdv)
        self.assertIn(fragment_text, str(exc))

    def test_data_with_no_command(self) -> None:
        """A data fragment at the start of the association is an error."""
        self.assert_error(Reassembler(), PDV(1, DATA_LAST, b"xx"), "no command pending")

    def test_data_before_last_command_fragment(self) -> None:
        """A data fragment between command fragments is an error."""
        r = Reassembler()
        r.feed(PDV(1, CMD, STORE[:10]))
        self.assert_error(r, PDV(1, DATA, b"xx"), "before the last command fragment")

    def test_command_while_dataset_in_progress(self) -> None:
        """A new command before the data set's last fragment is an error."""
        r = Reassembler()
        r.feed(PDV(1, CMD_LAST, STORE))
        r.feed(PDV(1, DATA, b"xx"))
        self.assert_error(r, PDV(1, CMD_LAST, ECHO), "before the last fragment")

    def test_command_right_after_command_announcing_dataset(self) -> None:
        """A command straight after one that announced a data set is an error."""
        r = Reassembler()
        r.feed(PDV(1, CMD_LAST, STORE))
        self.assert_error(r, PDV(1, CMD_LAST, ECHO), "previous data set")

    def test_command_fragments_on_two_contexts(self) -> None:
        """One command split across two context IDs is an error."""
        r = Reassembler()
        r.feed(PDV(1, CMD, STORE[:10]))
        self.assert_error(r, PDV(3, CMD_LAST, STORE[10:]), "context")

    def test_data_fragment_on_other_context(self) -> None:
        """A data fragment on another context than its command is an error."""
        r = Reassembler()
        r.feed(PDV(1, CMD_LAST, STORE))
        self.assert_error(r, PDV(3, DATA_LAST, b"xx"), "context 1")

    def test_data_for_command_without_dataset(self) -> None:
        """Data after a command whose CommandDataSetType said none is an error."""
        r = Reassembler()
        r.feed(PDV(1, CMD_LAST, STORE_NO_DATA))
        self.assert_error(r, PDV(1, DATA_LAST, b"xx"), "announced no data set")

    def test_odd_length_data_fragment(self) -> None:
        """An odd-length data fragment is an error (PS3.8 E.1)."""
        r = Reassembler()
        r.feed(PDV(1, CMD_LAST, STORE))
        self.assert_error(r, PDV(1, DATA, b"abc"), "odd-length")

    def test_odd_length_command_fragment(self) -> None:
        """An odd-length command fragment is an error (PS3.8 E.1)."""
        self.assert_error(Reassembler(), PDV(1, CMD, STORE[:9]), "odd-length")

    def test_command_over_cap(self) -> None:
        """Command fragments beyond the cap are refused before being joined."""
        r = Reassembler(max_command_length=64)
        r.feed(PDV(1, CMD, b"\x00" * 64))
        self.assert_error(r, PDV(1, CMD, b"\x00" * 2), "exceeds 64")

    def test_default_cap_is_64_kib(self) -> None:
        """The default command cap is 64 KiB."""
        r = Reassembler()
        r.feed(PDV(1, CMD, b"\x00" * MAX_COMMAND_LENGTH))
        self.assert_error(r, PDV(1, CMD, b"\x00\x00"), "exceeds")

    def test_undecodable_command_raises(self) -> None:
        """A malformed command set surfaces as DIMSEProtocolError on the last fragment."""
        self.assert_error(Reassembler(), PDV(1, CMD_LAST, b"\x08\x00\x16\x00"), "truncated")

    def test_reassembler_stays_broken_after_error(self) -> None:
        """After an error every further PDV raises, even a valid one."""
        r = Reassembler()
        self.assertRaises(DIMSEProtocolError, r.feed, PDV(1, DATA_LAST, b"xx"))
        self.assert_error(r, PDV(1, CMD_LAST, ECHO), "already failed")
        self.assertFalse(r.idle)


class MaxFragmentSizeTests(SynchronousTestCase):
    """max_fragment_size (PS3.8 9.3.5.1, D.1, E.1; HARDENING P15, F09)."""

    def test_peer_limit_minus_header(self) -> None:
        """A peer max of 16384 gives 16378-byte fragments, like DCMTK and pynetdicom."""
        self.assertEqual(max_fragment_size(16384, 1 << 20), 16378)

    def test_zero_means_our_cap(self) -> None:
        """A peer max of 0 (unlimited) uses our cap, never unlimited."""
        self.assertEqual(max_fragment_size(0, 65536), 65530)

    def test_our_cap_bounds_large_peer_limit(self) -> None:
        """A peer max of 2**32-1 is bounded by our cap."""
        self.assertEqual(max_fragment_size(2**32 - 1, 65536), 65530)

    def test_odd_limit_rounds_down_to_even(self) -> None:
        """An odd peer max still gives even fragments (PS3.8 E.1)."""
        self.assertEqual(max_fragment_size(4095, 65536), 4088)

    def test_smallest_usable_limit(self) -> None:
        """A limit of 8 leaves a 2-byte fragment."""
        self.assertEqual(max_fragment_size(8, 65536), 2)

    def test_tiny_limits_raise_instead_of_wrapping(self) -> None:
        """Limits 1 and 7 leave no room for a fragment and raise; nothing wraps."""
        for limit in (1, 7):
            self.assertRaises(ValueError, max_fragment_size, limit, 65536)
        self.assertRaises(ValueError, max_fragment_size, 0, 0)
        self.assertRaises(ValueError, max_fragment_size, -1, 65536)

    def test_result_always_even_and_positive(self) -> None:
        """Across many limits the size is even, at least 2, and fits the limit."""
        for limit in range(8, 5000, 7):
            size = max_fragment_size(limit, 1 << 20)
            self.assertEqual(size % 2, 0)
            self.assertGreaterEqual(size, 2)
            self.assertLessEqual(size + 6, limit)


class FragmentTests(SynchronousTestCase):
    """fragment and fragment_command."""

    def test_fragment_command_single_pdv(self) -> None:
        """A small command set fits one PDV flagged command+last."""
        pdvs = fragment_command(7, ECHO, 16384)
        self.assertEqual(pdvs, [PDV(7, CMD_LAST, ECHO)])

    def test_fragment_command_respects_peer_limit(self) -> None:
        """With a tiny peer max, each PDV item stays within it and only the last is flagged."""
        pdvs = fragment_command(1, STORE, 16)
        self.assertTrue(all(len(p.data) + 6 <= 16 for p in pdvs))
        self.assertEqual([p.control for p in pdvs], [CMD] * (len(pdvs) - 1) + [CMD_LAST])
        self.assertEqual(b"".join(p.data for p in pdvs), STORE)

    def test_fragment_dataset_round_trips_through_reassembler(self) -> None:
        """Our own fragments of a command and data set reassemble to the same bytes."""
        data = bytes(range(256)) * 10
        r = Reassembler()
        pdvs = fragment_command(1, STORE, 100) + fragment(1, data, max_fragment_size(100, 1000), command=False)
        events = [e for p in pdvs for e in r.feed(p)]
        chunks = [e.data for e in events if isinstance(e, DatasetFragment)]
        self.assertEqual(b"".join(chunks), data)
        self.assertTrue(r.idle)

    def test_empty_data_gives_one_last_fragment(self) -> None:
        """An empty data set is sent as one empty last fragment."""
        self.assertEqual(fragment(1, b"", 10, command=False), [PDV(1, DATA_LAST, b"")])

    def test_exact_multiple_has_no_trailing_empty_fragment(self) -> None:
        """Data of exactly two fragment sizes gives two PDVs, the second last."""
        pdvs = fragment(1, b"x" * 20, 10, command=False)
        self.assertEqual([p.control for p in pdvs], [DATA, DATA_LAST])

    def test_odd_fragment_size_refused(self) -> None:
        """An odd fragment size is refused (PS3.8 E.1)."""
        self.assertRaises(ValueError, fragment, 1, b"xx", 3, command=True)
