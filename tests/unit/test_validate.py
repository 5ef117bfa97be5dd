"""Tests for :mod:`gateway.validate`, the data set structure walker."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from typing import BinaryIO

import pydicom
from pydicom.data import get_testdata_file
from twisted.trial.unittest import SynchronousTestCase

from gateway.validate import DatasetSummary, MalformedDataset, walk_dataset

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
UNDEFINED = 0xFFFFFFFF
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


# -- Byte builders ---------------------------------------------------------------


def ex(tag: int, vr: bytes, value: bytes = b"", *, length: int | None = None, big: bool = False) -> bytes:
    """An Explicit VR element; ``length`` overrides the real value length."""
    e = ">" if big else "<"
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack(e + "HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, n) + value
    return struct.pack(e + "HH2sH", tag >> 16, tag & 0xFFFF, vr, n) + value


def im(tag: int, value: bytes = b"", *, length: int | None = None) -> bytes:
    """An Implicit VR Little Endian element."""
    n = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, n) + value


def marker(tag: int, length: int = 0, *, big: bool = False) -> bytes:
    """An item or delimiter header (PS3.5 7.5: no VR in any encoding)."""
    return struct.pack((">" if big else "<") + "HHI", tag >> 16, tag & 0xFFFF, length)


def item(content: bytes, *, undefined: bool = False, big: bool = False) -> bytes:
    """One sequence item of defined or undefined length."""
    if undefined:
        return marker(0xFFFEE000, UNDEFINED, big=big) + content + marker(0xFFFEE00D, big=big)
    return marker(0xFFFEE000, len(content), big=big) + content


def sq(tag: int, items: list[bytes], *, undefined: bool = True, big: bool = False) -> bytes:
    """An explicit SQ element holding already encoded items."""
    body = b"".join(items)
    if undefined:
        return ex(tag, b"SQ", body + marker(0xFFFEE0DD, big=big), length=UNDEFINED, big=big)
    return ex(tag, b"SQ", body, big=big)


def uid(text: str) -> bytes:
    """A UI value padded with NUL to even length."""
    raw = text.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SOP_INSTANCE = "1.2.3.4.5"
HEAD = ex(0x00080016, b"UI", uid(SOP_CLASS)) + ex(0x00080018, b"UI", uid(SOP_INSTANCE))


def walk(data: bytes, ts: str = EXPLICIT, **kwargs: int) -> DatasetSummary:
    """Walk ``data`` as a whole data set."""
    return walk_dataset(io.BytesIO(data), ts, **kwargs)  # type: ignore[arg-type]


def skip_file_meta(fp: BinaryIO) -> str:
    """Position ``fp`` after a Part 10 file's meta group; return its transfer syntax."""
    fp.seek(132)
    ts = ""
    while True:
        start = fp.tell()
        group, element, vr = struct.unpack("<HH2s", fp.read(6))
        if group != 2:
            fp.seek(start)
            return ts
        if vr in LONG_VRS:
            fp.read(2)
            (length,) = struct.unpack("<I", fp.read(4))
        else:
            (length,) = struct.unpack("<H", fp.read(2))
        value = fp.read(length)
        if element == 0x0010:
            ts = value.rstrip(b"\x00 ").decode()


class _CountingFile(io.BytesIO):
    """A BytesIO that counts the bytes read through it."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        """Read and count."""
        data = super().read(size)
        self.bytes_read += len(data)
        return data


# -- Tests ---------------------------------------------------------------------------


class PydicomFilesTests(SynchronousTestCase):
    """Real files shipped with pydicom walk, and their UIDs match pydicom's."""

    GOOD = [
        "CT_small.dcm",  # Explicit VR LE
        "MR_small_implicit.dcm",  # Implicit VR LE
        "MR_small_bigendian.dcm",  # Explicit VR BE
        "ExplVR_BigEnd.dcm",  # Explicit VR BE
        "MR_small_RLE.dcm",  # RLE, encapsulated
        "JPEG-lossy.dcm",  # JPEG baseline, encapsulated
        "JPEG2000.dcm",  # JPEG 2000
        "JPEG2000-embedded-sequence-delimiter.dcm",  # a fragment containing FFFE,E0DD bytes
        "image_dfl.dcm",  # Deflated Explicit VR LE
        "test-SR.dcm",  # deeply nested content sequences
        "waveform_ecg.dcm",  # many elements, sequences
        "rtplan.dcm",  # implicit VR with sequences
        "liver_expb_1frame.dcm",  # big endian with sequences
    ]

    def _walk_file(self, name: str) -> tuple[DatasetSummary, pydicom.Dataset, bytes]:
        """Walk one bundled file after its meta; return summary, pydicom's reading, bytes."""
        path = get_testdata_file(name, download=False)
        with open(path, "rb") as fp:
            ts = skip_file_meta(fp)
            summary = walk_dataset(fp, ts)
            fp.seek(0)
            data = fp.read()
        return summary, pydicom.dcmread(path), data

    def test_bundled_files_walk_with_right_uids(self) -> None:
        """Every encoding we accept walks and yields pydicom's SOP Class and Instance UIDs."""
        for name in self.GOOD:
            summary, ds, _ = self._walk_file(name)
            self.assertEqual(summary.sop_class_uid, ds.get("SOPClassUID"), name)
            self.assertEqual(summary.sop_instance_uid, ds.get("SOPInstanceUID"), name)
            self.assertIsNotNone(summary.sop_instance_uid, name)
            self.assertGreater(summary.element_count, 0, name)

    def test_un_sequence_file_walks(self) -> None:
        """pydicom's UN_sequence.dcm (UN of undefined length, implicit inside) walks; it has no SOP UIDs."""
        summary, _, data = self._walk_file("UN_sequence.dcm")
        self.assertIn(b"UN\x00\x00\xff\xff\xff\xff", data)
        self.assertIsNone(summary.sop_instance_uid)
        self.assertGreater(summary.element_count, 5)

    def test_study_series_and_modality_are_read(self) -> None:
        """Top-level Study/Series Instance UID and Modality are in the summary."""
        summary, ds, _ = self._walk_file("CT_small.dcm")
        self.assertEqual(summary.study_instance_uid, ds.StudyInstanceUID)
        self.assertEqual(summary.series_instance_uid, ds.SeriesInstanceUID)
        self.assertEqual(summary.modality, "CT")

    def test_pixel_data_offset_points_at_the_pixel_data_tag(self) -> None:
        """The offset addresses the (7FE0,0010) tag in the file, for native and encapsulated data."""
        for name, tag_bytes in [
            ("CT_small.dcm", b"\xe0\x7f\x10\x00"),
            ("JPEG2000.dcm", b"\xe0\x7f\x10\x00"),
            ("MR_small_bigendian.dcm", b"\x7f\xe0\x00\x10"),
        ]:
            summary, _, data = self._walk_file(name)
            assert summary.pixel_data_offset is not None
            self.assertEqual(data[summary.pixel_data_offset : summary.pixel_data_offset + 4], tag_bytes, name)

    def test_deflated_has_no_pixel_offset(self) -> None:
        """A deflated data set reports no file offset for pixel data (it would not address the file)."""
        summary, _, _ = self._walk_file("image_dfl.dcm")
        self.assertIsNone(summary.pixel_data_offset)

    def test_truncated_files_are_malformed(self) -> None:
        """pydicom's truncated samples fail with an element running past the end."""
        for name in ["MR_truncated.dcm", "rtplan_truncated.dcm"]:
            with open(get_testdata_file(name, download=False), "rb") as fp:
                ts = skip_file_meta(fp)
                e = self.assertRaises(MalformedDataset, walk_dataset, fp, ts)
            self.assertIn("runs past the end", e.comment, name)

    def test_data_set_in_another_transfer_syntax_is_malformed(self) -> None:
        """An implicit VR data set labelled JPEG Baseline (explicit VR) fails (D08)."""
        with open(get_testdata_file("SC_rgb_jpeg.dcm", download=False), "rb") as fp:
            ts = skip_file_meta(fp)
            self.assertEqual(ts, JPEG_BASELINE)
            e = self.assertRaises(MalformedDataset, walk_dataset, fp, ts)
        self.assertIn("invalid VR", e.comment)

    def test_walk_starts_at_current_position(self) -> None:
        """Bytes before the file position (meta, preamble) are not walked."""
        data = b"\xff" * 300 + HEAD
        fp = io.BytesIO(data)
        fp.seek(300)
        self.assertEqual(walk_dataset(fp, EXPLICIT).sop_instance_uid, SOP_INSTANCE)


class WellFormedTests(SynchronousTestCase):
    """Synthetic data sets that follow PS3.5 walk."""

    def test_missing_sop_uids_are_none_not_an_error(self) -> None:
        """A data set without SOP UIDs walks; the fields are None and the caller decides (D05)."""
        summary = walk(ex(0x00100010, b"PN", b"DOE^J "))
        self.assertIsNone(summary.sop_class_uid)
        self.assertIsNone(summary.sop_instance_uid)
        self.assertIsNone(summary.modality)
        self.assertEqual(summary.element_count, 1)

    def test_empty_data_set_walks(self) -> None:
        """Zero bytes are an empty data set with no elements."""
        self.assertEqual(walk(b"").element_count, 0)

    def test_values_in_items_are_not_taken_for_top_level(self) -> None:
        """A SOP Instance UID inside a sequence item does not fill the summary."""
        nested = sq(0x00081140, [item(ex(0x00081155, b"UI", uid("9.9.9")))])
        summary = walk(ex(0x00080016, b"UI", uid(SOP_CLASS)) + nested)
        self.assertEqual(summary.sop_class_uid, SOP_CLASS)
        self.assertIsNone(summary.sop_instance_uid)

    def test_nested_sequences_defined_and_undefined(self) -> None:
        """Mixed defined/undefined sequences and items walk, and everything is counted."""
        inner = sq(0x00400100, [item(ex(0x00080100, b"SH", b"AB"), undefined=True)], undefined=False)
        outer = sq(0x00081140, [item(inner), item(b"", undefined=True)], undefined=True)
        summary = walk(HEAD + outer + ex(0x00100010, b"PN", b"X "))
        # 2 UIDs + outer SQ + item + inner SQ + item + SH + item delim + item + item delim
        # + sequence delim + PN
        self.assertEqual(summary.element_count, 12)
        self.assertEqual(summary.sop_instance_uid, SOP_INSTANCE)

    def test_implicit_vr_sequences_of_undefined_length(self) -> None:
        """In implicit VR an undefined length means a sequence, walked item by item."""
        body = (
            im(0x00080016, uid(SOP_CLASS))
            + im(0x00080018, uid(SOP_INSTANCE))
            + im(0x00081140, item(im(0x00081155, uid("1.2")), undefined=True) + marker(0xFFFEE0DD), length=UNDEFINED)
            + im(0x00100010, b"X ")
        )
        summary = walk(body, IMPLICIT)
        self.assertEqual((summary.sop_class_uid, summary.sop_instance_uid), (SOP_CLASS, SOP_INSTANCE))

    def test_un_of_undefined_length_is_implicit_inside(self) -> None:
        """PS3.5 6.2.2: a UN of undefined length holds Implicit VR LE items."""
        content = item(im(0x00091001, b"ab"), undefined=True) + marker(0xFFFEE0DD)
        summary = walk(HEAD + ex(0x00091010, b"UN", content, length=UNDEFINED))
        self.assertEqual(summary.element_count, 7)

    def test_big_endian_sequences(self) -> None:
        """Explicit VR Big Endian items and delimiters walk."""
        body = (
            ex(0x00080016, b"UI", uid(SOP_CLASS), big=True)
            + sq(0x00081140, [item(ex(0x00081155, b"UI", uid("1.2"), big=True), undefined=True, big=True)], big=True)
            + ex(0x00280010, b"US", b"\x00\x02", big=True)
        )
        self.assertEqual(walk(body, BIG).sop_class_uid, SOP_CLASS)

    def test_encapsulated_pixel_data(self) -> None:
        """Basic Offset Table and fragments, then the sequence delimiter (PS3.5 A.4)."""
        frags = marker(0xFFFEE000, 0) + marker(0xFFFEE000, 4) + b"\xff\xd8\xff\xd9" + marker(0xFFFEE0DD)
        data = HEAD + ex(0x7FE00010, b"OB", frags, length=UNDEFINED)
        summary = walk(data, JPEG_BASELINE)
        self.assertEqual(summary.pixel_data_offset, len(HEAD))

    def test_encapsulated_icon_inside_an_item(self) -> None:
        """Encapsulated pixel data may sit in an item (Icon Image Sequence)."""
        frags = marker(0xFFFEE000, 0) + marker(0xFFFEE0DD)
        icon = sq(0x00880200, [item(ex(0x7FE00010, b"OB", frags, length=UNDEFINED), undefined=True)])
        self.assertIsNone(walk(HEAD + icon, JPEG_BASELINE).pixel_data_offset)

    def test_large_values_are_sought_over_not_read(self) -> None:
        """A 512 KiB native pixel value is skipped: far less than the file is read."""
        data = HEAD + ex(0x00280010, b"US", b"\x00\x02") + ex(0x7FE00010, b"OW", b"\x00" * 512 * 1024)
        fp = _CountingFile(data)
        summary = walk_dataset(fp, EXPLICIT)
        self.assertEqual(summary.pixel_data_offset, len(HEAD) + 10)
        self.assertLess(fp.bytes_read, 100 * 1024)

    def test_huge_nesting_with_a_high_limit_does_not_overflow_the_stack(self) -> None:
        """2,000 nested sequences walk when allowed: the walker is iterative (D02)."""
        body = ex(0x00100010, b"PN", b"X ")
        for _ in range(2000):
            body = sq(0x00081140, [item(body, undefined=True)])
        self.assertEqual(walk(HEAD + body, max_depth=5000).element_count, 2 + 2000 * 4 + 1)

    def test_hundred_thousand_elements_walk(self) -> None:
        """100k tiny private elements walk under the default budget (D18 lower side)."""
        body = b"".join(ex(0x00090000 | e, b"LO", b"ab") for e in range(0x1000, 0x1000 + 50_000))
        body += b"".join(ex(0x00110000 | e, b"LO", b"ab") for e in range(0x1000, 0x1000 + 50_000))
        self.assertEqual(walk(HEAD + body).element_count, 100_002)

    def test_odd_lengths_allowed_on_request(self) -> None:
        """The odd-length rule can be relaxed for a known broken modality."""
        self.assertEqual(walk(HEAD + ex(0x00100010, b"PN", b"ABC"), allow_odd_lengths=True).element_count, 3)


class MalformedTests(SynchronousTestCase):
    """Every structural fault raises MalformedDataset (HARDENING D01-D03, D09, D18)."""

    def assertMalformed(self, data: bytes, fragment: str, ts: str = EXPLICIT, **kwargs: int) -> MalformedDataset:
        """Assert the walk fails with a comment containing ``fragment``."""
        e = self.assertRaises(MalformedDataset, walk, data, ts, **kwargs)
        self.assertIn(fragment, e.comment)
        self.assertLessEqual(len(e.short_comment), 64)
        return e

    def test_truncated_header(self) -> None:
        """Bytes that stop inside an element header fail (D01)."""
        self.assertMalformed(HEAD + b"\x10\x00\x10", "inside an element header")

    def test_length_past_end_names_element_and_offset(self) -> None:
        """An element longer than the bytes left names the tag, length and offset (D01)."""
        e = self.assertMalformed(HEAD + ex(0x00100010, b"PN", b"AB", length=1000), "(0010,0010) length 1000")
        self.assertIn(f"at {len(HEAD)}", e.comment)

    def test_huge_declared_lengths(self) -> None:
        """0xFFFFFFF0 on OB/OW/UN/UT fails at once, without allocation (D03)."""
        for vr in [b"OB", b"OW", b"UN", b"UT"]:
            self.assertMalformed(HEAD + ex(0x00091010, vr, b"\x00" * 16, length=0xFFFFFFF0), "runs past the end")

    def test_undefined_length_on_non_sequence(self) -> None:
        """Undefined length on UT, or on OB outside Pixel Data, fails (D01)."""
        for vr in [b"UT", b"OB"]:
            self.assertMalformed(HEAD + ex(0x00091010, vr, length=UNDEFINED), "undefined length on VR")

    def test_invalid_vr_bytes(self) -> None:
        """Unknown, lower-case or binary VR letters fail (PS3.5 Table 6.2-1)."""
        for vr in [b"XX", b"lo", b"\x00\x00"]:
            self.assertMalformed(HEAD + ex(0x00100010, vr, b"AB"), "invalid VR")

    def test_odd_length(self) -> None:
        """Odd value lengths fail (PS3.5 7.1.1)."""
        self.assertMalformed(HEAD + ex(0x00100010, b"PN", b"ABC"), "odd length 3")

    def test_tags_not_ascending(self) -> None:
        """A tag lower than the previous one fails (PS3.5 7.1)."""
        self.assertMalformed(ex(0x00100020, b"LO", b"AB") + ex(0x00100010, b"PN", b"AB"), "not ascending")

    def test_duplicate_tag(self) -> None:
        """The same tag twice fails."""
        self.assertMalformed(HEAD + ex(0x00100010, b"PN", b"AB") * 2, "not ascending")

    def test_tags_not_ascending_inside_item(self) -> None:
        """Ordering is checked within each item too."""
        bad = item(ex(0x00081155, b"UI", uid("1.2")) + ex(0x00081150, b"UI", uid("1.2")))
        self.assertMalformed(HEAD + sq(0x00081140, [bad]), "not ascending")

    def test_non_item_in_sequence(self) -> None:
        """A data element directly in a sequence (no item) fails."""
        self.assertMalformed(HEAD + sq(0x00081140, [ex(0x00081155, b"UI", uid("1.2"))]), "in sequence (0008,1140)")

    def test_sequence_delimiter_with_length(self) -> None:
        """A sequence delimiter must have length 0 (PS3.5 7.5.1)."""
        body = ex(0x00081140, b"SQ", item(b"") + marker(0xFFFEE0DD, 4) + b"\x00" * 4, length=UNDEFINED)
        self.assertMalformed(HEAD + body, "sequence delimiter length 4")

    def test_item_delimiter_with_length(self) -> None:
        """An item delimiter must have length 0 (PS3.5 7.5.2)."""
        bad_item = marker(0xFFFEE000, UNDEFINED) + marker(0xFFFEE00D, 2) + b"\x00\x00"
        body = ex(0x00081140, b"SQ", bad_item + marker(0xFFFEE0DD), length=UNDEFINED)
        self.assertMalformed(HEAD + body, "item delimiter length 2")

    def test_item_delimiter_at_top_level(self) -> None:
        """A delimiter outside any item fails."""
        self.assertMalformed(HEAD + marker(0xFFFEE00D), "unexpected (FFFE,E00D)")

    def test_sequence_delimiter_in_defined_length_sequence(self) -> None:
        """A defined-length sequence holds no delimiter."""
        body = ex(0x00081140, b"SQ", item(b"") + marker(0xFFFEE0DD))
        self.assertMalformed(HEAD + body, "(FFFE,E0DD) in sequence")

    def test_unterminated_sequence(self) -> None:
        """An undefined-length sequence cut off at the end of the data fails."""
        self.assertMalformed(HEAD + ex(0x00081140, b"SQ", item(b""), length=UNDEFINED), "ends inside (0008,1140)")

    def test_element_overruns_its_item(self) -> None:
        """An element longer than its defined-length item fails, even if the file is long enough."""
        inner = ex(0x00081155, b"UI", uid("1.2"))
        bad_item = marker(0xFFFEE000, 4) + inner
        self.assertMalformed(HEAD + sq(0x00081140, [bad_item]) + b"\x00" * 64, "runs past the end of (0008,1140)")

    def test_item_overruns_its_sequence(self) -> None:
        """An item longer than its defined-length sequence fails."""
        content = item(ex(0x00081155, b"UI", uid("1.2")))
        body = ex(0x00081140, b"SQ", content, length=8) + content[8:]
        self.assertMalformed(HEAD + body, "runs past the end")

    def test_undefined_item_overruns_its_sequence(self) -> None:
        """An undefined-length item that does not end inside its defined-length sequence fails."""
        content = marker(0xFFFEE000, UNDEFINED) + ex(0x00081155, b"UI", uid("1.2"))
        body = ex(0x00081140, b"SQ", content, length=8) + content[8:] + marker(0xFFFEE00D)
        self.assertMalformed(HEAD + body, "runs past the end of (0008,1140)")

    def test_fragment_of_undefined_length(self) -> None:
        """Pixel data fragments must have a defined length (PS3.5 A.4)."""
        frags = marker(0xFFFEE000, 0) + marker(0xFFFEE000, UNDEFINED) + marker(0xFFFEE0DD)
        self.assertMalformed(HEAD + ex(0x7FE00010, b"OB", frags, length=UNDEFINED), "among pixel data fragments")

    def test_element_among_fragments(self) -> None:
        """Only items and the delimiter may follow encapsulated pixel data's header."""
        frags = marker(0xFFFEE000, 0) + ex(0x00100010, b"PN", b"AB")
        self.assertMalformed(HEAD + ex(0x7FE00010, b"OB", frags, length=UNDEFINED), "among pixel data fragments")

    def test_encapsulated_pixel_data_in_implicit_vr(self) -> None:
        """Encapsulated pixel data needs an explicit VR transfer syntax (PS3.5 A.4)."""
        data = im(0x00080016, uid(SOP_CLASS)) + im(0x7FE00010, marker(0xFFFEE000, 0), length=UNDEFINED)
        self.assertMalformed(data, "implicit VR", IMPLICIT)

    def test_explicit_data_set_under_implicit_syntax(self) -> None:
        """Explicit VR bytes walked as Implicit VR fail (D08)."""
        self.assertRaises(MalformedDataset, walk, HEAD + ex(0x00100010, b"PN", b"DOE^J "), IMPLICIT)

    def test_big_endian_data_set_under_little_endian_syntax(self) -> None:
        """Big endian bytes walked as Explicit VR Little Endian fail (D08)."""
        data = ex(0x00080016, b"UI", uid(SOP_CLASS), big=True) + ex(0x00080018, b"UI", uid(SOP_INSTANCE), big=True)
        self.assertRaises(MalformedDataset, walk, data, EXPLICIT)

    def test_deep_nesting_poc_shape(self) -> None:
        """The 1,100-level nested sequence PoC fails at the depth limit, with no recursion (D02)."""
        body = b""
        for _ in range(1100):
            body = sq(0x00081140, [item(body, undefined=True)])
        self.assertLess(len(body), 40_000)
        self.assertMalformed(HEAD + body, "nested deeper than 64")

    def test_deep_nesting_implicit(self) -> None:
        """Deep implicit VR nesting is bounded the same way."""
        body = b""
        for _ in range(100):
            body = im(0x00081140, item(body, undefined=True) + marker(0xFFFEE0DD), length=UNDEFINED)
        self.assertMalformed(body, "nested deeper than 10", IMPLICIT, max_depth=10)

    def test_element_budget(self) -> None:
        """More elements than the budget fail with a comment (D18)."""
        body = b"".join(ex(0x00090000 | e, b"LO", b"ab") for e in range(0x1000, 0x1000 + 200))
        self.assertMalformed(body, "more than 100 elements", max_elements=100)

    def test_item_budget(self) -> None:
        """A 10k-item sequence counts against the same budget."""
        body = sq(0x00081140, [item(b"")] * 10_000)
        self.assertMalformed(HEAD + body, "more than 5000 elements", max_elements=5000)
        self.assertEqual(walk(HEAD + body).element_count, 2 + 1 + 10_000 + 1)

    def test_short_comment_fits_error_comment(self) -> None:
        """short_comment is cut to 64 characters (LO) and keeps the start."""
        e = MalformedDataset("x" * 100)
        self.assertEqual(len(e.short_comment), 64)
        self.assertTrue(e.short_comment.startswith("xxx"))
        self.assertEqual(MalformedDataset("short").short_comment, "short")

    def test_top_level_uid_value_too_long(self) -> None:
        """A SOP Instance UID of megabytes is not read into memory."""
        self.assertMalformed(ex(0x00080018, b"UN", b"1" * 4096), "too long")


class DeflatedTests(SynchronousTestCase):
    """Deflated Explicit VR Little Endian (PS3.5 A.5) is inflated as a stream."""

    @staticmethod
    def deflate(data: bytes) -> bytes:
        """Raw deflate, as PS3.5 A.5 prescribes."""
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()

    def test_round_trip(self) -> None:
        """A deflated synthetic data set walks with its UIDs."""
        data = HEAD + sq(0x00081140, [item(ex(0x00081155, b"UI", uid("1.2")))]) + ex(0x7FE00010, b"OW", b"\x00" * 200_000)
        summary = walk(self.deflate(data), DEFLATED)
        self.assertEqual(summary.sop_instance_uid, SOP_INSTANCE)
        self.assertEqual(summary.element_count, 7)

    def test_truncated_stream(self) -> None:
        """A deflate stream cut short fails."""
        packed = self.deflate(HEAD + ex(0x7FE00010, b"OW", bytes(range(256)) * 400))
        self.assertMalformed(packed[: len(packed) // 2])

    def test_corrupt_stream(self) -> None:
        """Bytes that are not deflate data fail."""
        self.assertMalformed(b"\xff" * 100)

    def test_element_past_end_of_inflated_data(self) -> None:
        """A length past the end of the inflated data fails (the size is unknown up front)."""
        self.assertMalformed(self.deflate(HEAD + ex(0x00091010, b"OB", b"\x00" * 10, length=1000)))

    def assertMalformed(self, packed: bytes) -> None:
        """Assert a deflated walk fails."""
        self.assertRaises(MalformedDataset, walk, packed, DEFLATED)

    def test_deflate_bomb_stops_at_cap_with_bounded_memory(self) -> None:
        """~1 MB of deflated zeros (about 1 GB inflated) stops at a 64 MB cap using little memory (D09)."""
        header = HEAD + ex(0x00091010, b"OB", length=0x7FFFFFFE)
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        zeros = b"\x00" * (1 << 20)
        first = c.compress(header) + c.compress(zeros) + c.flush(zlib.Z_SYNC_FLUSH)
        # Once the window is all zeros, each further 1 MiB of zeros deflates to
        # the same byte-aligned block: repeat it instead of compressing 1 GB.
        block = c.compress(zeros) + c.flush(zlib.Z_SYNC_FLUSH)
        packed = first + block * 1000 + c.flush()
        self.assertGreater(len(packed), 1_000_000)
        self.assertLess(len(packed), 2 << 20)
        tracemalloc.start()
        try:
            e = self.assertRaises(MalformedDataset, walk, packed, DEFLATED, max_inflated_size=64 << 20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIn("inflates past", e.comment)
        self.assertLess(peak, 8 << 20)
