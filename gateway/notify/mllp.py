"""MLLP framing of HL7 v2 messages, sans-IO (issue 18).

Theory of operation
-------------------
The Minimal Lower Layer Protocol (HL7 v2.5.1 Appendix C, C.4; MLLP release 2)
delimits messages on a byte stream::

    <VT> message bytes <FS><CR>        VT = 0x0B, FS = 0x1C, CR = 0x0D

There is no length field: a message ends where ``<FS><CR>`` appears, and the
content may not contain ``<VT>`` or ``<FS>`` (C.4.3: "the HL7 content ...
must not contain the start block or end block characters").

:func:`encode` frames one message; it refuses content holding ``<VT>`` or
``<FS>`` (our own misuse: :class:`LocalFramingError`).

:class:`MllpDecoder` frames the bytes a peer sends, incrementally. It is in
one of three states: *between* frames (only ``<VT>`` may come), *inside* a
frame (content until ``<FS>``) and *after* an ``<FS>`` (only ``<CR>`` may
come). Each :meth:`MllpDecoder.feed` returns the complete frames found, in
order, and when the peer broke the framing, a :class:`FramingError` as the
**last** element (errors are data, as in :mod:`gateway.ul.framing`). The
peer breaks it by:

- sending any byte outside a frame (a ``<CR><LF>`` between messages, which
  some engines add, is refused too: the brief says bytes outside a frame are
  an error, and a peer that adds them is not speaking MLLP);
- sending a ``<VT>`` inside a frame, or an ``<FS>`` not followed by ``<CR>``;
- sending a frame whose content passes ``max_size`` bytes: the decoder says
  so as soon as the cap is passed, without keeping more than the cap.

After an error the decoder is dead: nothing after the fault can be framed
reliably, so further input is dropped (the adapter closes the connection).
Feeding one byte at a time gives the same result as feeding everything at
once, and the work is linear in the bytes received: the search for ``<FS>``
restarts where the previous one stopped.

This module is sans-IO: no sockets, no clocks, no logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Union

__all__ = [
    "START_BLOCK",
    "END_BLOCK",
    "CARRIAGE_RETURN",
    "DEFAULT_MAX_SIZE",
    "Frame",
    "FramingError",
    "LocalFramingError",
    "MllpDecoder",
    "encode",
]

#: HL7 v2.5.1 C.4.3: the start block character, <VT>.
START_BLOCK: Final = b"\x0b"
#: HL7 v2.5.1 C.4.3: the end block character, <FS>.
END_BLOCK: Final = b"\x1c"
#: HL7 v2.5.1 C.4.3: the carriage return that follows the end block.
CARRIAGE_RETURN: Final = b"\x0d"

#: The default cap of one message's content (an ACK or a notification is a few KiB).
DEFAULT_MAX_SIZE: Final = 1024 * 1024


class LocalFramingError(ValueError):
    """We asked to frame content MLLP cannot carry (it holds <VT> or <FS>): a bug of ours."""


@dataclass(frozen=True)
class Frame:
    """One complete message's content, without the block characters."""

    content: bytes


@dataclass(frozen=True)
class FramingError:
    """The peer broke MLLP framing; the connection cannot be read any further.

    :ivar reason: what was wrong, in words (no message content).
    """

    reason: str


#: What :meth:`MllpDecoder.feed` returns items of.
Event = Union[Frame, FramingError]


def encode(content: bytes) -> bytes:
    """Frame one message (HL7 v2.5.1 C.4.3: ``<VT> content <FS><CR>``).

    :param content: the message (segments separated by CR).
    :returns: the bytes to write.
    :raises LocalFramingError: when the content holds <VT> or <FS>.
    """
    if START_BLOCK in content or END_BLOCK in content:
        raise LocalFramingError("an MLLP message may not contain <VT> or <FS>")
    return START_BLOCK + content + END_BLOCK + CARRIAGE_RETURN


class _State(Enum):
    """Where the decoder is in the stream."""

    BETWEEN = "between frames"
    INSIDE = "inside a frame"
    AFTER_FS = "after <FS>"
    BROKEN = "broken"


class MllpDecoder:
    """Incremental MLLP deframer with a size cap (see the module docstring).

    :param max_size: the most content bytes one frame may hold.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._state = _State.BETWEEN
        self._buffer = bytearray()

    @property
    def broken(self) -> bool:
        """Whether the peer broke the framing (all later input is dropped)."""
        return self._state is _State.BROKEN

    @property
    def mid_frame(self) -> bool:
        """Whether a frame has begun and not ended (a close now cuts a message)."""
        return self._state in (_State.INSIDE, _State.AFTER_FS)

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes from the peer.

        :param data: any number of bytes (one, or several frames' worth).
        :returns: the frames completed by them, in order, and a
            :class:`FramingError` last if the peer broke the framing.
        """
        events: list[Event] = []
        view = memoryview(data)
        position = 0
        while position < len(view) and self._state is not _State.BROKEN:
            if self._state is _State.BETWEEN:
                if view[position : position + 1] != START_BLOCK:
                    return self._fail(events, f"byte 0x{view[position]:02X} outside an MLLP frame")
                self._state = _State.INSIDE
                position += 1
            elif self._state is _State.INSIDE:
                chunk = bytes(view[position:])
                end = chunk.find(END_BLOCK)
                content = chunk if end < 0 else chunk[:end]
                if START_BLOCK in content:
                    return self._fail(events, "<VT> inside an MLLP frame")
                if len(self._buffer) + len(content) > self.max_size:
                    return self._fail(events, f"MLLP frame larger than {self.max_size} bytes")
                self._buffer += content
                if end < 0:
                    position = len(view)
                else:
                    self._state = _State.AFTER_FS
                    position += end + 1
            else:  # AFTER_FS: HL7 v2.5.1 C.4.3, the end block is <FS><CR>.
                if view[position : position + 1] != CARRIAGE_RETURN:
                    return self._fail(events, "<FS> not followed by <CR>")
                events.append(Frame(bytes(self._buffer)))
                self._buffer = bytearray()
                self._state = _State.BETWEEN
                position += 1
        return events

    def _fail(self, events: list[Event], reason: str) -> list[Event]:
        """Condemn the stream: keep nothing more, report ``reason`` after the frames found."""
        self._state = _State.BROKEN
        self._buffer = bytearray()
        events.append(FramingError(reason))
        return events
