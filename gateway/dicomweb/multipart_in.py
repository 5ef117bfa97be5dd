"""A sans-IO parser of ``multipart/related`` request bodies (RFC 2046 5.1, RFC 2387), for STOW-RS.

Theory of operation
-------------------
A STOW-RS request (PS3.18 10.5.1) carries its instances as the parts of a
``multipart/related; type="application/dicom"`` body. The body can be many
gigabytes, so it is never held whole: :class:`MultipartParser` is fed the
body in whatever chunks the network gives (:meth:`MultipartParser.feed`) and
returns events, h11-style (bytes in, frozen events out, no I/O):

* :class:`PartStarted` once a part's headers are complete (names lower-cased);
* :class:`PartData` for each piece of its body, in order (concatenated, the
  pieces are the part's body exactly; how they are cut depends on the chunks);
* :class:`PartEnded` when its closing delimiter has been seen;
* :class:`BodyEnded` at the close delimiter (``--boundary--``).

RFC 2046 5.1.1 grammar, as read here: the body is a preamble (ignored), then
``--boundary`` at the very start or after CRLF, optional transport padding
(linear white space) and CRLF, the part's header lines up to an empty line,
the part's body up to ``CRLF--boundary``; then either ``--`` (the close
delimiter: the rest is an epilogue, ignored) or padding and CRLF and the next
part. The delimiter is searched for in the unconsumed bytes only; at most
``len(delimiter) - 1`` bytes of a part's body are kept back between chunks
(they may be the start of a delimiter split across two chunks), so memory is
bounded whatever the chunking, and every split of a body yields the same
parts.

Hostile input is bounded (HARDENING): a part's headers longer than
``max_header_bytes``, more than ``max_parts`` parts, a malformed delimiter
line, and a body that ends before the close delimiter (or that has no
delimiter at all) raise :class:`MultipartError`, which the service answers
400 (PS3.18 10.5.3.1: "unable to store any Instances due to bad syntax",
for instances not already answered).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Union

__all__ = [
    "BodyEnded",
    "MultipartError",
    "MultipartParser",
    "PartData",
    "PartEnded",
    "PartStarted",
    "MAX_HEADER_BYTES",
    "MAX_PARTS",
    "parse_media_type",
    "valid_boundary",
]

#: The most bytes of one part's header block (its lines and their CRLFs).
MAX_HEADER_BYTES: Final = 16 * 1024

#: The most parts one request may carry (the response lists each instance).
MAX_PARTS: Final = 100_000

#: The longest transport padding (RFC 2046 5.1.1 LWSP after a delimiter) accepted before its CRLF.
_MAX_PADDING: Final = 256

#: RFC 2046 5.1.1 ``bcharsnospace`` plus space: what a boundary may be made of.
_BCHARS: Final = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


class MultipartError(ValueError):
    """The body is not valid ``multipart`` (the request is answered 400)."""


@dataclass(frozen=True)
class PartStarted:
    """A part's header block is complete.

    :ivar headers: ``(name, value)`` pairs in order, names lower-cased, values stripped.
    """

    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


@dataclass(frozen=True)
class PartData:
    """A piece of the current part's body.

    :ivar data: the bytes (a copy: the parser keeps no reference to the caller's chunk).
    """

    data: bytes


@dataclass(frozen=True)
class PartEnded:
    """The current part's body is complete."""


@dataclass(frozen=True)
class BodyEnded:
    """The close delimiter was seen: no more parts (what follows is an epilogue, ignored)."""


Event = Union[PartStarted, PartData, PartEnded, BodyEnded]


class _State(Enum):
    """Where the parser is in the RFC 2046 5.1.1 grammar."""

    PREAMBLE = "preamble"
    DELIMITER = "delimiter"  # just after --boundary: "--", or padding + CRLF
    HEADERS = "headers"
    BODY = "body"
    EPILOGUE = "epilogue"


class MultipartParser:
    """Incremental ``multipart`` body parser (see the theory of operation).

    :param boundary: the ``boundary`` parameter of the request's Content-Type (unquoted).
    :param max_header_bytes: the most bytes of one part's header block.
    :param max_parts: the most parts accepted.
    :raises MultipartError: for a boundary RFC 2046 does not allow.
    """

    def __init__(self, boundary: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES, max_parts: int = MAX_PARTS) -> None:
        if not valid_boundary(boundary):
            raise MultipartError(f"the boundary parameter is not 1 to {MAX_BOUNDARY} RFC 2046 boundary characters")
        self._delimiter = b"\r\n--" + boundary
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        # The preamble may be empty, the first delimiter then being the first
        # bytes of the body: a CRLF in front lets one search serve both cases.
        self._buffer = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self.parts = 0
        #: Bytes fed so far.
        self.received = 0

    @property
    def finished(self) -> bool:
        """Whether the close delimiter has been seen."""
        return self._state is _State.EPILOGUE

    @property
    def in_part(self) -> bool:
        """Whether a part has started and not ended."""
        return self._state is _State.BODY

    def feed(self, data: bytes) -> list[Event]:
        """Parse the next chunk of the body.

        :param data: the chunk, any size (empty is allowed).
        :returns: the events it completes, in order.
        :raises MultipartError: on malformed input (the parser is then unusable).
        """
        self.received += len(data)
        if self._state is _State.EPILOGUE:
            return []
        self._buffer += data
        events: list[Event] = []
        while True:
            before = (self._state, len(self._buffer))
            if self._state is _State.PREAMBLE:
                self._preamble()
            elif self._state is _State.DELIMITER:
                self._after_delimiter(events)
            elif self._state is _State.HEADERS:
                self._headers(events)
            elif self._state is _State.BODY:
                self._body(events)
            else:  # EPILOGUE: ignore the rest (RFC 2046 5.1.1)
                self._buffer.clear()
                return events
            if (self._state, len(self._buffer)) == before:
                return events

    def end(self) -> None:
        """The body is complete: check it ended with the close delimiter.

        :raises MultipartError: no delimiter at all, or no close delimiter.
        """
        if self._state is _State.EPILOGUE:
            return
        if self._state is _State.PREAMBLE:
            raise MultipartError("the body has no boundary delimiter: not a multipart body with this boundary")
        raise MultipartError("the body ends before the closing boundary delimiter (truncated)")

    # -- states -----------------------------------------------------------------------------

    def _preamble(self) -> None:
        """Drop the preamble up to the first delimiter (keeping a tail that may start one)."""
        at = self._buffer.find(self._delimiter)
        if at < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return
        del self._buffer[: at + len(self._delimiter)]
        self._state = _State.DELIMITER

    def _after_delimiter(self, events: list[Event]) -> None:
        """After ``--boundary``: ``--`` closes the body; else padding, CRLF, and a part starts."""
        buffer = self._buffer
        if len(buffer) < 2:
            return
        if buffer[:2] == b"--":
            del buffer[:]
            self._state = _State.EPILOGUE
            events.append(BodyEnded())
            return
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > _MAX_PADDING or buffer.strip(b" \t"):
                raise MultipartError("a boundary delimiter is followed by text other than white space")
            return
        if buffer[:end].strip(b" \t"):
            raise MultipartError("a boundary delimiter is followed by text other than white space")
        del buffer[: end + 2]
        if self.parts >= self._max_parts:
            raise MultipartError(f"more than {self._max_parts} parts")
        self.parts += 1
        self._state = _State.HEADERS

    def _headers(self, events: list[Event]) -> None:
        """Read a part's header block up to its empty line (RFC 2046 5.1.1, RFC 5322 2.2)."""
        buffer = self._buffer
        if buffer[:2] == b"\r\n":
            block = b""
            consumed = 2
        else:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self._max_header_bytes:
                    raise MultipartError(f"a part's headers are longer than {self._max_header_bytes} bytes")
                return
            block = bytes(buffer[:end])
            consumed = end + 4
        if consumed > self._max_header_bytes + 4:
            raise MultipartError(f"a part's headers are longer than {self._max_header_bytes} bytes")
        del buffer[:consumed]
        events.append(PartStarted(_parse_headers(block)))
        self._state = _State.BODY

    def _body(self, events: list[Event]) -> None:
        """Pass a part's body on, up to its delimiter, keeping back what may start one."""
        buffer = self._buffer
        at = buffer.find(self._delimiter)
        if at < 0:
            keep = len(self._delimiter) - 1
            if len(buffer) > keep:
                cut = len(buffer) - keep
                events.append(PartData(bytes(buffer[:cut])))
                del buffer[:cut]
            return
        if at:
            events.append(PartData(bytes(buffer[:at])))
        del buffer[: at + len(self._delimiter)]
        events.append(PartEnded())
        self._state = _State.DELIMITER


def _parse_headers(block: bytes) -> tuple[tuple[str, str], ...]:
    """Split a header block into ``(name, value)`` pairs.

    :param block: the lines, CRLF-separated, without the final empty line.
    :raises MultipartError: a line without a colon, a folded line, or a non-ASCII/empty name.
    """
    headers = []
    if not block:
        return ()
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            # RFC 7230 3.2.4 deprecates folding; no STOW-RS client folds.
            raise MultipartError("folded part header lines are not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not name or not name.isascii() or name.strip() != name:
            raise MultipartError("a part header line is not 'Name: value'")
        try:
            text = value.strip().decode("ascii")
        except UnicodeDecodeError:
            text = value.strip().decode("latin-1")
        headers.append((name.decode("ascii").lower(), text))
    return tuple(headers)


#: The longest boundary accepted. RFC 2046 5.1.1 says 70 characters, but
#: Orthanc's DICOMweb plugin sends 73 (two UUIDs joined by a dash): a few more
#: bytes per delimiter cost nothing, so the bound is generous and still bounded.
MAX_BOUNDARY: Final = 256


def valid_boundary(boundary: bytes) -> bool:
    """Whether ``boundary`` is made of RFC 2046 5.1.1 bchars, not ending in space, 1 to :data:`MAX_BOUNDARY` long."""
    return 0 < len(boundary) <= MAX_BOUNDARY and all(c in _BCHARS for c in boundary) and not boundary.endswith(b" ")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its media type and parameters (RFC 9110 8.3.1, RFC 2045 5.1).

    Parameter values may be tokens or quoted strings (with backslash
    escapes); names are lower-cased, as is the media type. RFC 2387 3.1
    writes ``type="application/dicom"`` quoted, and senders also send it
    bare: both are read the same.

    :param value: the header value, e.g. ``multipart/related; type="application/dicom"; boundary=x``.
    :returns: ``(media type, {name: value})``.
    :raises MultipartError: for a value that cannot be parsed.
    """
    text = value.strip()
    media, _, rest = text.partition(";")
    media = media.strip().lower()
    if "/" not in media or any(c.isspace() for c in media):
        raise MultipartError(f"not a media type: {value[:80]!r}")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MultipartError(f"a media type parameter has no value: {rest[i:i + 40]!r}")
        name = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            chars = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            if i >= n:
                raise MultipartError("a quoted media type parameter is not closed")
            i += 1
            param = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            param = rest[i:end].strip()
            i = end
        if not name:
            raise MultipartError("a media type parameter has no name")
        params.setdefault(name, param)
    return media, params
