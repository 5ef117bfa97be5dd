"""Tests for :mod:`gateway.dicomweb.body`: the exact bytes of a STOW-RS body, its length, and flow control."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.dicomweb import body as body_module
from gateway.dicomweb.body import BodyFileChanged, MultipartBody, Part, make_boundary, part_for


class _Consumer:
    """Collects what the producer writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1


class BodyTests(SynchronousTestCase):
    """The body of PS3.18 8.6.1.2 / RFC 2046 5.1.1, from files."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)

    def file(self, name: str, data: bytes) -> Part:
        path = os.path.join(self.folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return part_for(path)

    def test_exact_bytes_and_length(self) -> None:
        """Two files give delimiter, part header, content, CRLF each, then the close delimiter; length equals the bytes written."""
        parts = [self.file("a", b"AAAA"), self.file("b", b"\r\n--B--\r\n")]
        body = MultipartBody(parts, SynchronousRunner(), boundary="xyz")
        consumer = _Consumer()
        self.successResultOf(body.startProducing(consumer))
        expected = (
            b"--xyz\r\nContent-Type: application/dicom\r\n\r\nAAAA\r\n"
            b"--xyz\r\nContent-Type: application/dicom\r\n\r\n\r\n--B--\r\n\r\n"
            b"--xyz--\r\n"
        )
        self.assertEqual(bytes(consumer.data), expected)
        self.assertEqual(body.length, len(expected))
        self.assertEqual(body.written, body.length)

    def test_content_type_quotes_type_and_boundary(self) -> None:
        """RFC 2387 3.1 / PS3.18 8.6.1.2: type and boundary are quoted strings."""
        body = MultipartBody([], SynchronousRunner(), boundary="b-1")
        self.assertEqual(body.content_type(), b'multipart/related; type="application/dicom"; boundary="b-1"')

    def test_boundaries_are_random_and_short_enough(self) -> None:
        """Two boundaries differ and each is at most 70 characters (RFC 2046 5.1.1)."""
        first, second = make_boundary(), make_boundary()
        self.assertNotEqual(first, second)
        self.assertLessEqual(len(first), 70)

    def test_a_boundary_with_a_quote_is_refused(self) -> None:
        """A boundary that would break the quoted parameter raises ValueError."""
        self.assertRaises(ValueError, MultipartBody, [], SynchronousRunner(), 'a"b')

    def test_large_file_is_read_in_chunks(self) -> None:
        """A file of 2.5 chunks is written in 3 pieces (memory bounded by the chunk, not the file)."""
        data = os.urandom(body_module.CHUNK * 2 + body_module.CHUNK // 2)
        body = MultipartBody([self.file("big", data)], SynchronousRunner(), boundary="q")
        consumer = _Consumer()
        self.successResultOf(body.startProducing(consumer))
        # head, 3 chunks, CRLF, close
        self.assertEqual(consumer.writes, 6)
        self.assertIn(data, bytes(consumer.data))

    def test_pause_holds_the_next_write_until_resume(self) -> None:
        """After pauseProducing nothing more is written; resumeProducing lets it finish."""
        parts = [self.file("a", b"1" * 10), self.file("b", b"2" * 10)]
        body = MultipartBody(parts, SynchronousRunner(), boundary="p")
        consumer = _Consumer()

        class Pausing(_Consumer):
            def write(inner, data: bytes) -> None:  # noqa: N805 - a closure on the test
                consumer.write(data)
                if consumer.writes == 1:
                    body.pauseProducing()

        done = body.startProducing(Pausing())
        self.assertEqual(consumer.writes, 1)
        self.assertNoResult(done)
        body.resumeProducing()
        self.successResultOf(done)
        self.assertEqual(body.written, body.length)

    def test_stop_means_the_deferred_never_fires(self) -> None:
        """stopProducing while paused: no more writes, and the Deferred does not fire (IBodyProducer)."""
        body = MultipartBody([self.file("a", b"x" * 10)], SynchronousRunner(), boundary="s")
        consumer = _Consumer()

        class Pausing(_Consumer):
            def write(inner, data: bytes) -> None:  # noqa: N805
                consumer.write(data)
                body.pauseProducing()

        done = body.startProducing(Pausing())
        body.stopProducing()
        self.assertNoResult(done)
        self.assertEqual(consumer.writes, 1)

    def test_a_file_shorter_than_promised_fails_the_body(self) -> None:
        """A file truncated after its size was taken: the Deferred fails with BodyFileChanged."""
        part = self.file("a", b"x" * 10)
        with open(part.path, "wb") as f:
            f.write(b"x" * 4)
        body = MultipartBody([part], SynchronousRunner(), boundary="t")
        self.failureResultOf(body.startProducing(_Consumer()), BodyFileChanged)
