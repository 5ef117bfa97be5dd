"""The body of a STOW-RS request: ``multipart/related`` streamed from the spool files (PS3.18 8.6.1.2, 10.5.1).

A Store Instances request carries each instance as one part of a
``multipart/related`` body whose root type is ``application/dicom``
(PS3.18 10.5.1.1, RFC 2387). The body is::

    --BOUNDARY CRLF
    Content-Type: application/dicom CRLF
    CRLF
    <the Part 10 file's bytes> CRLF
    --BOUNDARY CRLF
    ...
    --BOUNDARY-- CRLF

(RFC 2046 5.1.1: each delimiter is CRLF "--" boundary, the first one's CRLF
may be left out, and the close delimiter is followed by "--").

:class:`MultipartBody` knows its length before it starts (the file sizes
plus the fixed framing), so the request has a ``Content-Length`` and is never
chunked: many STOW-RS servers and the proxies in front of them refuse a
chunked upload. It reads each file in :data:`CHUNK` pieces on the file
runner and writes them as the transport asks (Twisted registers a request
body as a streaming producer and pauses it when its buffer is full), so
memory does not depend on the size of the instances nor on their number.

The ``Content-Type`` header (:meth:`MultipartBody.content_type`) writes both
``type`` and ``boundary`` as quoted strings: RFC 2387 3.1 requires ``type``
(its value holds a ``/``, which a token may not, RFC 2045 5.1), and PS3.18
8.6.1.2 writes the boundary quoted as well.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, Sequence

from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from gateway.blocking import IBlockingRunner

__all__ = ["CHUNK", "BodyFileChanged", "MultipartBody", "Part", "make_boundary", "part_for"]

#: Bytes read from a file at once.
CHUNK: Final = 256 * 1024

#: The media type of each part (PS3.18 8.7.3.1, Part 10 file).
PART_TYPE: Final = b"application/dicom"


def make_boundary() -> str:
    """A boundary that cannot occur in a file by chance (RFC 2046 5.1.1: at most 70 characters).

    :returns: ``"dicom-gateway-"`` and 32 random hex digits.
    """
    return "dicom-gateway-" + secrets.token_hex(16)


@dataclass(frozen=True)
class Part:
    """One instance of the body: a Part 10 file and its size, known before the body starts.

    :ivar path: the file.
    :ivar size: its size in bytes (the file must not change while it is sent).
    """

    path: str
    size: int


class BodyFileChanged(IOError):
    """A file ended before the size the body promised (it changed while being sent)."""


@implementer(IBodyProducer)
class MultipartBody:
    """A ``multipart/related; type="application/dicom"`` request body read from files (see the module docstring).

    :param parts: the files, in order.
    :param file_runner: runs the blocking opens and reads.
    :param boundary: the boundary (a fresh random one by default); it must
        not contain a quote or a backslash.
    """

    def __init__(self, parts: Sequence[Part], file_runner: IBlockingRunner, boundary: str | None = None) -> None:
        self.parts = tuple(parts)
        self.file_runner = file_runner
        self.boundary = boundary or make_boundary()
        if not 1 <= len(self.boundary) <= 70 or any(c in self.boundary for c in '"\\\r\n'):
            raise ValueError("a boundary is 1 to 70 characters and holds no quote, backslash or line break")
        encoded = self.boundary.encode("ascii")
        self._part_head = b"--" + encoded + b"\r\nContent-Type: " + PART_TYPE + b"\r\n\r\n"
        self._close = b"--" + encoded + b"--\r\n"
        #: IBodyProducer: the exact number of bytes :meth:`startProducing` writes.
        self.length = sum(len(self._part_head) + part.size + 2 for part in self.parts) + len(self._close)
        #: Bytes written so far.
        self.written = 0
        self._paused: Deferred[None] | None = None
        self._stopped = False

    def content_type(self) -> bytes:
        """The request's ``Content-Type`` (PS3.18 8.6.1.2, RFC 2387 3.1: ``type`` and ``boundary`` quoted)."""
        return b'multipart/related; type="application/dicom"; boundary="' + self.boundary.encode("ascii") + b'"'

    # -- IBodyProducer -------------------------------------------------------------------

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        """Write the whole body to ``consumer``; the Deferred fires when it is written.

        After :meth:`stopProducing` the Deferred never fires (IBodyProducer).
        """
        done: Deferred[None] = Deferred()

        async def run() -> None:
            try:
                await self._produce(consumer)
            except Exception as e:  # handed to the Deferred as a failure
                if not self._stopped:
                    done.errback(e)
                return
            if not self._stopped:
                done.callback(None)

        Deferred.fromCoroutine(run())
        return done

    def pauseProducing(self) -> None:
        """The transport's buffer is full: wait before the next write."""
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        """The transport wants more."""
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        """The request is abandoned (connection lost, cancelled): stop reading."""
        self._stopped = True
        self.resumeProducing()

    # -- the work ------------------------------------------------------------------------

    async def _produce(self, consumer: Any) -> None:
        for part in self.parts:
            await self._write(consumer, self._part_head)
            handle: BinaryIO = await self.file_runner.run(open, part.path, "rb")
            try:
                left = part.size
                while left > 0:
                    chunk: bytes = await self.file_runner.run(handle.read, min(CHUNK, left))
                    if not chunk:
                        raise BodyFileChanged(f"{part.path} ended {left} bytes before its size {part.size}")
                    left -= len(chunk)
                    await self._write(consumer, chunk)
            finally:
                await self.file_runner.run(handle.close)
            await self._write(consumer, b"\r\n")
        await self._write(consumer, self._close)

    async def _write(self, consumer: Any, data: bytes) -> None:
        if self._paused is not None:
            await self._paused
        if self._stopped:
            raise _Stopped()
        consumer.write(data)
        self.written += len(data)


class _Stopped(Exception):
    """The producer was stopped: end the read loop (the Deferred does not fire)."""


def part_for(path: str) -> Part:
    """The :class:`Part` of a file, with its size now (blocking: run it on the file runner).

    :param path: the file.
    """
    return Part(path, os.stat(path).st_size)
