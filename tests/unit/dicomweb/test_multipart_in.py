"""The sans-IO multipart parser of the STOW-RS service (RFC 2046 5.1, RFC 2387)."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from gateway.dicomweb.multipart_in import (
    BodyEnded,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    parse_media_type,
    valid_boundary,
)

BOUNDARY = b"gw-boundary-42"


def body(parts: list[bytes], boundary: bytes = BOUNDARY, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart body of ``parts`` (each with a Content-Type header)."""
    out = preamble
    for part in parts:
        out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    return out + b"--" + boundary + b"--\r\n" + epilogue


def collect(parser: MultipartParser, chunks: list[bytes]) -> list[tuple[tuple[tuple[str, str], ...], bytes]]:
    """Feed ``chunks`` and end; the parts as (headers, body), checking the event order."""
    parts: list[tuple[tuple[tuple[str, str], ...], bytes]] = []
    current: bytearray | None = None
    headers: tuple[tuple[str, str], ...] = ()
    ended = False
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert not ended, "event after BodyEnded"
            if isinstance(event, PartStarted):
                assert current is None
                current, headers = bytearray(), event.headers
            elif isinstance(event, PartData):
                assert current is not None
                current += event.data
            elif isinstance(event, PartEnded):
                assert current is not None
                parts.append((headers, bytes(current)))
                current = None
            elif isinstance(event, BodyEnded):
                assert current is None
                ended = True
    parser.end()
    return parts


class SplitTests(SynchronousTestCase):
    """Every way of cutting a body into chunks gives the same parts."""

    def test_every_two_way_split_gives_the_same_parts(self) -> None:
        """A body cut at any one offset (boundaries split included) parses to the same parts."""
        contents = [b"first\r\n--gw-boundary-4 not quite", b"", b"\r\n--", b"x" * 100]
        data = body(contents, preamble=b"ignored preamble\r\n", epilogue=b"ignored epilogue")
        expected = [(( ("content-type", "application/dicom"),), c) for c in contents]
        for cut in range(len(data) + 1):
            self.assertEqual(collect(MultipartParser(BOUNDARY), [data[:cut], data[cut:]]), expected, cut)

    def test_byte_at_a_time_and_random_chunks_give_the_same_parts(self) -> None:
        """One byte per feed, and random chunkings, give the parts of a single feed."""
        rng = random.Random(17)
        contents = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 3000))) for _ in range(5)]
        contents.append(b"\r\n--" + BOUNDARY[:-1])  # a near-delimiter inside a part
        data = body(contents)
        whole = collect(MultipartParser(BOUNDARY), [data])
        self.assertEqual([c for _, c in whole], contents)
        self.assertEqual(collect(MultipartParser(BOUNDARY), [data[i : i + 1] for i in range(len(data))]), whole)
        for _ in range(20):
            cuts = sorted(rng.sample(range(1, len(data)), 30))
            chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
            self.assertEqual(collect(MultipartParser(BOUNDARY), chunks), whole)

    def test_body_starting_with_the_delimiter_and_transport_padding(self) -> None:
        """No preamble, and white space after a delimiter (RFC 2046 transport padding), are accepted."""
        data = b"--" + BOUNDARY + b"  \t\r\nX-A: 1\r\n\r\nabc\r\n--" + BOUNDARY + b"-- \r\n"
        self.assertEqual(collect(MultipartParser(BOUNDARY), [data]), [((("x-a", "1"),), b"abc")])

    def test_part_without_headers(self) -> None:
        """A part with an empty header block has no headers (the default type applies)."""
        data = b"--" + BOUNDARY + b"\r\n\r\nabc\r\n--" + BOUNDARY + b"--"
        self.assertEqual(collect(MultipartParser(BOUNDARY), [data]), [((), b"abc")])

    def test_memory_held_is_bounded_by_the_delimiter(self) -> None:
        """Fed a large part in chunks, the parser passes on all but fewer bytes than the delimiter's length."""
        parser = MultipartParser(BOUNDARY)
        parser.feed(b"--" + BOUNDARY + b"\r\n\r\n")
        passed = 0
        for _ in range(100):
            passed += sum(len(e.data) for e in parser.feed(b"y" * 65536) if isinstance(e, PartData))
        self.assertGreater(passed, 100 * 65536 - len(BOUNDARY) - 4)


class HostileTests(SynchronousTestCase):
    """Malformed and hostile bodies raise :class:`MultipartError` (answered 400)."""

    def test_no_boundary_in_the_body(self) -> None:
        """A body without the delimiter is refused at its end."""
        parser = MultipartParser(BOUNDARY)
        self.assertEqual(parser.feed(b"\x00" * 10000), [])
        self.assertRaises(MultipartError, parser.end)

    def test_missing_final_boundary(self) -> None:
        """A body cut before its close delimiter is refused at its end (truncated)."""
        data = body([b"abc"])
        parser = MultipartParser(BOUNDARY)
        parser.feed(data[: data.rindex(b"--" + BOUNDARY + b"--")])
        error = self.assertRaises(MultipartError, parser.end)
        self.assertIn("truncated", str(error))

    def test_huge_part_headers(self) -> None:
        """A part's header block over the bound is refused before it is complete."""
        parser = MultipartParser(BOUNDARY, max_header_bytes=1024)
        parser.feed(b"--" + BOUNDARY + b"\r\n")
        self.assertRaises(MultipartError, parser.feed, b"X-Long: " + b"a" * 2000)

    def test_too_many_parts(self) -> None:
        """More parts than the bound are refused."""
        parser = MultipartParser(BOUNDARY, max_parts=2)
        self.assertRaises(MultipartError, parser.feed, body([b"a", b"b", b"c"]))

    def test_garbage_after_a_delimiter(self) -> None:
        """Text other than white space after a delimiter is refused."""
        parser = MultipartParser(BOUNDARY)
        self.assertRaises(MultipartError, parser.feed, b"--" + BOUNDARY + b"junk\r\n\r\n")

    def test_header_line_without_colon_and_folded_lines(self) -> None:
        """Header lines must be ``Name: value``; folded lines are refused."""
        for block in (b"NoColonHere", b"A: 1\r\n  folded"):
            parser = MultipartParser(BOUNDARY)
            self.assertRaises(MultipartError, parser.feed, b"--" + BOUNDARY + b"\r\n" + block + b"\r\n\r\n")

    def test_invalid_boundaries(self) -> None:
        """Empty, over 256 characters, or with characters outside RFC 2046 bchars: refused (73, as Orthanc sends, is taken)."""
        self.assertTrue(valid_boundary(b"b" * 73))
        for bad in (b"", b"x" * 257, b"a\r\nb", b"ends with space "):
            self.assertFalse(valid_boundary(bad))
            self.assertRaises(MultipartError, MultipartParser, bad)


class MediaTypeTests(SynchronousTestCase):
    """Content-Type parsing (RFC 9110 8.3.1): quoted or bare parameters."""

    def test_quoted_and_bare_type_parameter(self) -> None:
        """``type`` quoted (RFC 2387 3.1) or bare, and a quoted boundary with escapes, read the same."""
        for value in (
            'multipart/related; type="application/dicom"; boundary="a\\"b c"',
            'Multipart/Related;type=application/dicom;boundary="a\\"b c"',
        ):
            media, params = parse_media_type(value)
            self.assertEqual((media, params["type"], params["boundary"]), ("multipart/related", "application/dicom", 'a"b c'))

    def test_unparsable_values(self) -> None:
        """A value that is not a media type, or an unclosed quote, is refused."""
        for value in ("nonsense", 'multipart/related; boundary="open', "multipart/related; novalue"):
            self.assertRaises(MultipartError, parse_media_type, value)
