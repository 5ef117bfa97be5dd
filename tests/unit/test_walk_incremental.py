"""Tests for :class:`gateway.validate.DatasetWalker`, the walk fed as the bytes arrive (issue 13 item 2).

The central property: whatever the split of the bytes into pieces, the
walker gives exactly the summary, or exactly the :class:`MalformedDataset`
comment, that one whole feed gives, and that :func:`walk_dataset` gives for
the same bytes in a file (interop tests pin the Error Comments). Then the
walker's own promises: errors raised by ``feed`` depend only on the bytes
fed so far, memory stays small whatever the instance size, and the header
capture for routing parses to what :func:`gateway.parse.read_header` reads.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from collections.abc import Sequence
from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from gateway.headerbytes import parse_header
from gateway.parse import read_header
from gateway.validate import DatasetSummary, DatasetWalker, MalformedDataset, walk_dataset
from tests.support import dataset_bytes as raw
from tests.support import filewalk_reference
from tests.support.datasets import dataset_bytes, dataset_offset
from tests.unit.fuzz import SYNTAXES, dataset_seeds, mutate

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED = 0xFFFFFFFF

#: pydicom's bundled files, one per shape the walker must handle.
FILES: tuple[str, ...] = (
    "CT_small.dcm",  # Explicit VR LE, native pixel data
    "MR_small_implicit.dcm",  # Implicit VR LE
    "MR_small_bigendian.dcm",  # Explicit VR BE
    "ExplVR_BigEnd.dcm",  # Explicit VR BE
    "image_dfl.dcm",  # Deflated Explicit VR LE
    "MR_small_RLE.dcm",  # encapsulated (RLE)
    "JPEG2000.dcm",  # encapsulated (JPEG 2000)
    "JPEG2000-embedded-sequence-delimiter.dcm",  # FFFE,E0DD bytes inside a fragment
    "test-SR.dcm",  # deeply nested content sequences
    "rtplan.dcm",  # implicit VR, nested sequences
    "waveform_ecg.dcm",  # many elements, sequences
    "liver_expb_1frame.dcm",  # big endian with sequences
    "UN_sequence.dcm",  # UN of undefined length (PS3.5 6.2.2)
)

#: Limits of the walks compared (the fuzz target's: nothing can make a test slow).
LIMITS: dict[str, int] = {"max_inflated_size": 1 << 20, "max_elements": 100_000}

_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@lru_cache(maxsize=None)
def bundled(name: str) -> tuple[str, int, bytes]:
    """A bundled file's transfer syntax, data set offset and data set bytes."""
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return read_header(path).transfer_syntax_uid, dataset_offset(path), dataset_bytes(path)


Outcome = tuple[str, object]


def outcome_of_pieces(
    pieces: Sequence[bytes | memoryview], ts: str, **kwargs: int
) -> tuple[Outcome, DatasetWalker]:
    """Feed ``pieces`` to a new walker and finish; return ``("ok", summary)`` or ``("error", comment)``."""
    walker = DatasetWalker(ts, **kwargs)  # type: ignore[arg-type]
    try:
        for piece in pieces:
            walker.feed(piece)
        return ("ok", walker.finish()), walker
    except MalformedDataset as e:
        return ("error", e.comment), walker


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut ``data`` at the given positions (taken modulo its length, sorted)."""
    if not data:
        return [data]
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def file_outcome(data: bytes, ts: str, **kwargs: int) -> Outcome:
    """Today's interface: :func:`walk_dataset` over a file holding ``data``."""
    try:
        summary = walk_dataset(io.BytesIO(data), ts, **kwargs)  # type: ignore[arg-type]
    except MalformedDataset as e:
        return ("error", e.comment)
    return ("ok", summary)


def reference_outcome(data: bytes, ts: str, **kwargs: int) -> Outcome:
    """The oracle: the pre-issue-13 file walk (:mod:`tests.support.filewalk_reference`), header fields empty."""
    try:
        old = filewalk_reference.walk_dataset(io.BytesIO(data), ts, **kwargs)  # type: ignore[arg-type]
    except filewalk_reference.MalformedDataset as e:
        return ("error", e.comment)
    return ("ok", DatasetSummary(**dataclasses.asdict(old)))


def without_header(outcome: Outcome) -> Outcome:
    """The outcome with the header capture fields cleared (``walk_dataset`` captures none)."""
    kind, value = outcome
    if kind == "ok":
        assert isinstance(value, DatasetSummary)
        return kind, dataclasses.replace(value, header=None, header_transfer_syntax=None)
    return outcome


cuts_strategy = st.lists(st.integers(0, 1 << 24), max_size=40)


# -- Split invariance -----------------------------------------------------------


class SplitInvarianceTests(SynchronousTestCase):
    """Any split of the bytes gives the outcome of one whole feed, and of the file walk."""

    def assertSameOutcome(self, data: bytes, ts: str, cuts: Sequence[int]) -> Outcome:
        """Whole feed, split feed, byte-sized pieces near the cuts and the file walk agree."""
        whole, _ = outcome_of_pieces([data], ts, **LIMITS)
        pieces, _ = outcome_of_pieces(split(data, cuts), ts, **LIMITS)
        views, _ = outcome_of_pieces([memoryview(p) for p in split(data, cuts)], ts, **LIMITS)
        self.assertEqual(pieces, whole)
        self.assertEqual(views, whole)
        self.assertEqual(without_header(file_outcome(data, ts, **LIMITS)), without_header(whole))
        self.assertEqual(without_header(whole), reference_outcome(data, ts, **LIMITS))
        return whole

    @_SETTINGS
    @given(name=st.sampled_from(FILES), cuts=cuts_strategy)
    def test_bundled_files_walk_the_same_in_any_split(self, name: str, cuts: list[int]) -> None:
        """Every bundled file's summary (header included) is the same for any split of its bytes."""
        ts, _, data = bundled(name)
        kind, _ = self.assertSameOutcome(data, ts, cuts)
        self.assertEqual(kind, "ok", name)

    def test_bundled_files_one_byte_at_a_time(self) -> None:
        """Byte-by-byte feeding (the smallest pieces) gives the whole feed's summary for every file."""
        for name in FILES:
            ts, _, data = bundled(name)
            whole, _ = outcome_of_pieces([data], ts)
            single, _ = outcome_of_pieces([data[i : i + 1] for i in range(len(data))], ts)
            self.assertEqual(single, whole, name)
            self.assertEqual(whole[0], "ok", name)

    @_SETTINGS
    @given(name=st.sampled_from(FILES), at=st.integers(0, 1 << 24), cuts=cuts_strategy)
    def test_truncated_files_fail_the_same_in_any_split(self, name: str, at: int, cuts: list[int]) -> None:
        """A bundled file cut anywhere gives the same outcome (mostly an error) in any split."""
        ts, _, data = bundled(name)
        self.assertSameOutcome(data[: at % (len(data) + 1)], ts, cuts)

    @_SETTINGS
    @given(
        name=st.sampled_from(FILES),
        at=st.integers(0, 1 << 24),
        value=st.sampled_from([0, 1, 2, 0x7F, 0x100, 0xFFFE, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFF0, UNDEFINED]),
        width=st.sampled_from([2, 4]),
        cuts=cuts_strategy,
    )
    def test_corrupted_lengths_fail_the_same_in_any_split(
        self, name: str, at: int, value: int, width: int, cuts: list[int]
    ) -> None:
        """A 16- or 32-bit length field overwritten anywhere gives the same outcome in any split."""
        ts, _, data = bundled(name)
        if len(data) < 8:
            return
        big = ts == BIG
        # Any position: often a length field, otherwise a tag or a value.
        pos = at % (len(data) - 4)
        fmt = (">" if big else "<") + ("H" if width == 2 else "I")
        corrupted = bytearray(data)
        corrupted[pos : pos + width] = struct.pack(fmt, value & (0xFFFF if width == 2 else 0xFFFFFFFF))
        self.assertSameOutcome(bytes(corrupted), ts, cuts)

    @_SETTINGS
    @given(
        seed=st.sampled_from(dataset_seeds()),
        operations=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
        cuts=cuts_strategy,
    )
    def test_hostile_corpus_fails_the_same_in_any_split(
        self, seed: bytes, operations: list[tuple[int, int, int]], cuts: list[int]
    ) -> None:
        """The fuzz corpus (bundled files, deep nesting, long sequences, a deflate bomb), mutated, in any split."""
        data = mutate(seed, operations)
        if not data:
            return
        self.assertSameOutcome(data[1:], SYNTAXES[data[0] % len(SYNTAXES)], cuts)

    def test_structure_error_just_before_deflate_corruption_is_split_independent(self) -> None:
        """A structural error and corrupt deflate data in one zlib block: the same verdict for any split."""
        value = bytes((i * 7919) % 251 for i in range(40_000))  # poorly compressible
        prefix = raw.minimal("1.2.3.4") + raw.explicit(0x00291010, "OB", value) + b"\x30\x00\x10\x00ZZ\x02\x00ab"
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH) + b"\xff" * 16
        whole, _ = outcome_of_pieces([packed], DEFLATED)
        self.assertEqual(whole[0], "error")
        self.assertEqual(reference_outcome(packed, DEFLATED), whole)
        for size in (1, 5, 4096, 16383, 20000, 65537):
            pieces, _ = outcome_of_pieces(split(packed, range(size, len(packed), size)), DEFLATED)
            self.assertEqual(pieces, whole, size)

    def test_deflate_bomb_fails_the_same_in_any_split(self) -> None:
        """A deflate bomb stops at the cap with the same comment whatever the split (D09)."""
        bomb = raw.deflate_bomb("1.2.3", 8 << 20)
        whole, _ = outcome_of_pieces([bomb], DEFLATED, max_inflated_size=1 << 20)
        self.assertEqual(whole, ("error", "deflated data set inflates past 1048576 bytes"))
        for size in (1, 7, 1000, 16384, 65536):
            pieces, _ = outcome_of_pieces(split(bomb, range(size, len(bomb), size)), DEFLATED, max_inflated_size=1 << 20)
            self.assertEqual(pieces, whole, size)


# -- When errors are raised -------------------------------------------------------


class ErrorTimingTests(SynchronousTestCase):
    """``feed`` raises what the bytes so far prove; ``finish`` what only the end proves."""

    HEAD = raw.explicit(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\x00") + raw.explicit(
        0x00080018, "UI", b"1.2.3.4\x00"
    )

    def test_invalid_vr_raises_from_feed(self) -> None:
        """A header with an invalid VR fails in the feed that completes it, not at finish."""
        walker = DatasetWalker(EXPLICIT)
        walker.feed(self.HEAD + b"\x10\x00\x10\x00")
        e = self.assertRaises(MalformedDataset, walker.feed, b"ZZ\x02\x00ab")
        self.assertEqual(e.comment, f"invalid VR 0x5A5A in (0010,0010) at {len(self.HEAD)}")

    def test_value_past_the_end_raises_only_from_finish(self) -> None:
        """A top-level value longer than what arrives is a pending skip, the file walk's error at finish."""
        data = self.HEAD + raw.explicit(0x7FE00010, "OW", b"\x00" * 100, length=1000)
        walker = DatasetWalker(EXPLICIT)
        walker.feed(data)
        e = self.assertRaises(MalformedDataset, walker.finish)
        self.assertEqual(e.comment, f"(7FE0,0010) length 1000 runs past the end of the data set at {len(self.HEAD)}")
        self.assertEqual(file_outcome(data, EXPLICIT), ("error", e.comment))

    def test_error_inside_a_sequence_that_runs_past_the_end_is_the_sequence_length(self) -> None:
        """Garbage inside a defined-length SQ longer than the data set: the SQ's length is the first broken rule."""
        garbage = raw.item(raw.explicit(0x00081155, "UI", b"1.2\x00")) + b"\x10\x00\x10\x00ZZ\x02\x00ab"
        data = self.HEAD + raw.explicit(0x00081140, "SQ", garbage, length=4000)
        walker = DatasetWalker(EXPLICIT)
        walker.feed(data)  # provisional: the SQ may yet be complete
        e = self.assertRaises(MalformedDataset, walker.finish)
        self.assertIn("(0008,1140) length 4000 runs past the end of the data set", e.comment)
        self.assertEqual(file_outcome(data, EXPLICIT), ("error", e.comment))

    def test_error_inside_a_sequence_raises_once_its_end_is_passed(self) -> None:
        """Once the bytes pass the SQ's end, the provisional error inside it is raised from feed."""
        garbage = raw.item(raw.explicit(0x00081155, "UI", b"1.2\x00")) + b"\x10\x00\x10\x00ZZ\x02\x00ab"
        sequence = raw.explicit(0x00081140, "SQ", garbage)
        walker = DatasetWalker(EXPLICIT)
        walker.feed(self.HEAD + sequence)
        e = self.assertRaises(MalformedDataset, walker.feed, b"\x00")
        self.assertIn("invalid VR 0x5A5A in (0010,0010)", e.comment)
        self.assertEqual(file_outcome(self.HEAD + sequence + b"\x00\x00", EXPLICIT), ("error", e.comment))

    def test_overrun_of_a_sequence_ending_with_the_data_set_names_the_data_set(self) -> None:
        """An element overrunning its item in a last SQ that ends with the data set: "data set", as the file walk said."""
        inner = raw.item(raw.explicit(0x00081150, "UI", b"1.2\x00", length=40))
        data = self.HEAD + raw.explicit(0x00081140, "SQ", inner)
        for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
            outcome, _ = outcome_of_pieces(pieces, EXPLICIT)
            self.assertEqual(outcome, ("error", f"(0008,1150) length 40 runs past the end of the data set at {len(self.HEAD) + 20}"))
        self.assertEqual(reference_outcome(data, EXPLICIT), outcome)
        # With one more element after the SQ, the SQ is the bound named.
        longer = data + raw.explicit(0x00100010, "PN", b"AB")
        outcome, _ = outcome_of_pieces([longer], EXPLICIT)
        self.assertEqual(outcome, ("error", f"(0008,1150) length 40 runs past the end of the (0008,1140) at {len(self.HEAD) + 20}"))
        self.assertEqual(reference_outcome(longer, EXPLICIT), outcome)

    def test_failed_walker_stays_failed(self) -> None:
        """After an error every feed and finish raises the same error again."""
        walker = DatasetWalker(EXPLICIT)
        first = self.assertRaises(MalformedDataset, walker.feed, b"\x10\x00\x10\x00ZZ\x02\x00ab")
        self.assertEqual(self.assertRaises(MalformedDataset, walker.feed, b"\x00" * 10).comment, first.comment)
        self.assertEqual(self.assertRaises(MalformedDataset, walker.finish).comment, first.comment)

    def test_finish_is_final(self) -> None:
        """finish() twice gives the same summary; feed() after finish() is a programming error."""
        walker = DatasetWalker(EXPLICIT)
        walker.feed(self.HEAD)
        summary = walker.finish()
        self.assertIs(walker.finish(), summary)
        self.assertEqual(summary.sop_instance_uid, "1.2.3.4")
        self.assertRaises(ValueError, walker.feed, b"\x00" * 8)

    def test_truncated_header_raises_only_from_finish(self) -> None:
        """Half an element header waits for the next piece; at finish it is the file walk's error."""
        walker = DatasetWalker(EXPLICIT)
        walker.feed(self.HEAD + b"\x10\x00\x10")
        e = self.assertRaises(MalformedDataset, walker.finish)
        self.assertEqual(e.comment, f"data set ends inside an element header at {len(self.HEAD)}")
        self.assertEqual(reference_outcome(self.HEAD + b"\x10\x00\x10", EXPLICIT), ("error", e.comment))

    def test_fed_buffers_are_not_kept(self) -> None:
        """A bytearray fed (with a provisional error pending, then after a failure) can be resized at once."""
        garbage = raw.item(raw.explicit(0x00081155, "UI", b"1.2\x00")) + b"\x10\x00\x10\x00ZZ\x02\x00ab"
        buffer = bytearray(self.HEAD + raw.explicit(0x00081140, "SQ", garbage, length=4000))
        walker = DatasetWalker(EXPLICIT)
        walker.feed(buffer)  # the error inside the SQ is provisional
        del buffer[:]  # raises BufferError if the walker still exported it
        buffer += b"\x00" * 5000
        try:
            walker.feed(buffer)
        except MalformedDataset:
            pass
        else:
            self.fail("the provisional error was not raised")
        buffer.extend(b"\x00")
        # An error raised from the feed that brings it.
        direct = bytearray(self.HEAD + b"\x10\x00\x10\x00ZZ\x02\x00ab")
        try:
            DatasetWalker(EXPLICIT).feed(direct)
        except MalformedDataset:
            pass
        direct.extend(b"\x00")

    @_SETTINGS
    @given(
        seed=st.sampled_from(dataset_seeds()),
        operations=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
        tail=st.binary(max_size=64),
    )
    def test_feed_errors_do_not_depend_on_later_bytes(
        self, seed: bytes, operations: list[tuple[int, int, int]], tail: bytes
    ) -> None:
        """An error raised by feed at byte k is raised at byte k whatever follows it."""
        data = mutate(seed, operations)
        if len(data) < 2:
            return
        ts, body = SYNTAXES[data[0] % len(SYNTAXES)], data[1:]

        def raised_at(stream: bytes) -> tuple[int, str] | None:
            walker = DatasetWalker(ts, **LIMITS)  # type: ignore[arg-type]
            for k in range(len(stream)):
                try:
                    walker.feed(stream[k : k + 1])
                except MalformedDataset as e:
                    return k, e.comment
            return None

        found = raised_at(body)
        if found is not None:
            k, _ = found
            self.assertEqual(raised_at(body[: k + 1] + tail), found)


# -- Memory and the fast path ---------------------------------------------------


class MemoryTests(SynchronousTestCase):
    """The walker keeps a few small buffers whatever the instance size."""

    HEAD = raw.minimal("1.2.3.4")

    def test_200_mb_pixel_data_in_1_mib_pieces_keeps_buffers_small(self) -> None:
        """200 MB of native pixel data fed in 1 MiB pieces: the walker never holds more than a few KiB."""
        size = 200 << 20
        mib = bytes(1 << 20)
        walker = DatasetWalker(EXPLICIT)
        walker.feed(self.HEAD + raw.explicit(0x7FE00010, "OW", length=size))
        peak = walker.retained_bytes
        for _ in range(size >> 20):
            walker.feed(mib)
            peak = max(peak, walker.retained_bytes)
        summary = walker.finish()
        self.assertLessEqual(peak, 4096)
        self.assertEqual(summary.pixel_data_offset, len(self.HEAD))
        self.assertEqual(summary.header, self.HEAD)

    def test_deflated_pixel_data_keeps_buffers_small(self) -> None:
        """A 64 MB deflated pixel value fed in 1 MiB pieces: at most one partial 64 KiB deflate block is held."""
        stream = raw.deflate_bomb("1.2.3.4", 64 << 20)
        walker = DatasetWalker(DEFLATED)
        peak = 0
        for at in range(0, len(stream), 1 << 20):
            walker.feed(stream[at : at + (1 << 20)])
            peak = max(peak, walker.retained_bytes)
        summary = walker.finish()
        self.assertEqual(summary.sop_instance_uid, "1.2.3.4")
        self.assertLessEqual(peak, 64 * 1024 + 4096 + len(summary.header or b""))

    def test_header_over_the_cap_is_none_but_the_summary_is_right(self) -> None:
        """A header bigger than header_cap gives header None and the same summary otherwise."""
        private = raw.explicit(0x00291010, "OB", b"\x01" * 10_000)
        data = self.HEAD + private + raw.explicit(0x7FE00010, "OW", b"\x00" * 1000)
        capped, walker = outcome_of_pieces(split(data, range(0, len(data), 333)), EXPLICIT, header_cap=4096)
        full, _ = outcome_of_pieces([data], EXPLICIT)
        assert isinstance(capped[1], DatasetSummary) and isinstance(full[1], DatasetSummary)
        self.assertIsNone(capped[1].header)
        self.assertIsNone(capped[1].header_transfer_syntax)
        self.assertEqual(capped[1], dataclasses.replace(full[1], header=None, header_transfer_syntax=None))
        self.assertEqual(full[1].header, self.HEAD + private)
        self.assertEqual(walker.retained_bytes, 0)

    def test_header_exactly_at_the_cap_is_kept(self) -> None:
        """A header of exactly header_cap bytes is kept; one byte less of cap drops it."""
        data = self.HEAD + raw.explicit(0x7FE00010, "OW", b"\x00" * 100)
        kept, _ = outcome_of_pieces([data], EXPLICIT, header_cap=len(self.HEAD))
        dropped, _ = outcome_of_pieces([data], EXPLICIT, header_cap=len(self.HEAD) - 1)
        self.assertEqual(kept[1].header, self.HEAD)  # type: ignore[union-attr]
        self.assertIsNone(dropped[1].header)  # type: ignore[union-attr]


# -- Header capture for routing ----------------------------------------------------


class HeaderCaptureTests(SynchronousTestCase):
    """The kept header is the data set before the pixel data, parseable as routing reads it."""

    def test_parsed_header_equals_read_header(self) -> None:
        """For every bundled file the parsed header equals read_header's data set, element for element."""
        for name in FILES:
            path = get_testdata_file(name, download=False)
            assert path is not None
            ts, offset, data = bundled(name)
            expected = read_header(path)
            (kind, summary), _ = outcome_of_pieces(split(data, range(0, len(data), 16384)), ts, start_offset=offset)
            assert isinstance(summary, DatasetSummary), (name, kind)
            parsed = parse_header(summary)
            self.assertEqual(parsed, expected.dataset, name)
            for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SOPInstanceUID"):
                self.assertEqual(parsed.get(keyword), expected.dataset.get(keyword), (name, keyword))
            self.assertEqual(summary.pixel_data_offset, None if ts == DEFLATED else expected.pixel_offset, name)

    def test_header_is_the_bytes_before_pixel_data(self) -> None:
        """Native data: the header is the data set's prefix up to the pixel data tag, in its own syntax."""
        ts, offset, data = bundled("CT_small.dcm")
        (_, summary), _ = outcome_of_pieces([data], ts, start_offset=offset)
        assert isinstance(summary, DatasetSummary) and summary.pixel_data_offset is not None
        self.assertEqual(summary.header, data[: summary.pixel_data_offset - offset])
        self.assertEqual(summary.header_transfer_syntax, ts)

    def test_deflated_header_is_inflated_explicit_little_endian(self) -> None:
        """Deflated data: the header is inflated bytes, to be parsed as Explicit VR Little Endian."""
        ts, _, data = bundled("image_dfl.dcm")
        (_, summary), _ = outcome_of_pieces([data], ts)
        assert isinstance(summary, DatasetSummary) and summary.header is not None
        inflated = zlib.decompressobj(-15).decompress(data)
        self.assertTrue(inflated.startswith(summary.header))
        self.assertEqual(summary.header_transfer_syntax, EXPLICIT)

    def test_no_pixel_data_keeps_the_whole_data_set(self) -> None:
        """Without pixel data the header is the whole data set."""
        data = raw.minimal("1.2.3.4")
        (_, summary), _ = outcome_of_pieces([data[:5], data[5:]], EXPLICIT)
        self.assertEqual(summary.header, data)  # type: ignore[union-attr]

    def test_large_header_values_are_readable(self) -> None:
        """A 20 KB value in the header parses and reads back (nothing is deferred to a file there is not)."""
        value = bytes(range(256)) * 80
        data = raw.minimal("1.2.3.4") + raw.explicit(0x00291010, "OB", value) + raw.explicit(0x7FE00010, "OW", b"\x00" * 10)
        (_, summary), _ = outcome_of_pieces([data], EXPLICIT)
        assert isinstance(summary, DatasetSummary)
        self.assertEqual(parse_header(summary)[0x00291010].value, value)

    def test_parse_header_without_header_fails(self) -> None:
        """parse_header refuses a summary whose header did not fit."""
        (_, summary), _ = outcome_of_pieces([raw.minimal("1.2.3.4")], EXPLICIT, header_cap=4)
        assert isinstance(summary, DatasetSummary)
        self.assertRaises(ValueError, parse_header, summary)

    def test_bytes_after_the_deflate_stream_are_ignored(self) -> None:
        """PS3.5 A.5 padding (or anything) after the end of the deflate stream is not walked."""
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = c.compress(raw.minimal("1.2.3.4")) + c.flush()
        (_, summary), _ = outcome_of_pieces([packed, b"\x00garbage"], DEFLATED)
        self.assertEqual(summary.sop_instance_uid, "1.2.3.4")  # type: ignore[union-attr]
