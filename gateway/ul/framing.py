"""Turn a TCP byte stream into PDUs (PS3.8 9.3.1), with length caps checked first.

Theory of operation
-------------------
A PDU on the wire is a 6-byte header (type, reserved, 4-byte PDU-length)
followed by PDU-length bytes of body (PS3.8 9.3.1).  TCP delivers these in
arbitrary pieces: a 256 KiB P-DATA-TF may arrive as four 64 KiB reads, or a
single read may hold the tail of one PDU and three whole release PDUs.

:class:`PDUBuffer` keeps the received pieces in a queue, unjoined, together
with the number of bytes held.  It works in two steps per PDU:

1. **Header.**  The first byte is checked as soon as it arrives: anything
   other than 1..7 is not DICOM (``GET / HTTP/1.1`` starts with 0x47, a TLS
   ClientHello with 0x16; HARDENING P03/P04), so the stream is condemned at
   once.  When all 6 header bytes are in, the declared length is checked
   against the caps *before any body byte is kept for it* (HARDENING R4:
   never read or allocate more than min(declared, cap)): P-DATA-TF against
   ``max_pdata_length`` (our advertised Maximum Length, PS3.8 D.1;
   HARDENING P20), A-ASSOCIATE-RQ/AC against ``max_other_length`` (P05) and
   the 68-byte fixed part (P06), the four short PDUs against exactly 4
   (P28).
2. **Body.**  Once the queue holds the declared length, the pieces are
   joined once, into exactly one ``bytes`` object, and handed to
   :func:`gateway.ul.pdu.decode`.  No partial join ever happens, so the cost
   is linear in the bytes received however they are chunked, and feeding one
   byte at a time works the same as feeding everything at once.

Errors are data, as in the rest of the upper layer: the first
:class:`~gateway.ul.errors.PDUDecodeError` is returned as the **last**
element of :meth:`PDUBuffer.feed`'s result, after the PDUs decoded before
it.  From then on the buffer is dead: the state machine is about to send an
A-ABORT and close (PS3.8 9.3.1, Evt19), and nothing after the fault can be
framed reliably, so further input is dropped.

This module is sans-IO: no sockets, no clocks, no logging.
"""

from __future__ import annotations

from collections import deque

from gateway.ul.errors import AbortReason, PDUDecodeError
from gateway.ul.pdu import (
    ASSOCIATE_FIXED_LENGTH,
    PDU,
    PDU_HEADER,
    PDU_HEADER_LENGTH,
    PDV_HEADER_LENGTH,
    SHORT_PDU_BODY_LENGTH,
    PDUType,
    decode,
)

#: The PDU type codes PS3.8 9.3.1 defines (0x01..0x07).
_KNOWN_TYPES = frozenset(int(t) for t in PDUType)
#: PDUs whose body is exactly 4 bytes (PS3.8 Tables 9-21, 9-24, 9-25, 9-26).
_SHORT_TYPES = frozenset(
    {PDUType.A_ASSOCIATE_RJ, PDUType.A_RELEASE_RQ, PDUType.A_RELEASE_RP, PDUType.A_ABORT}
)
#: Default cap for A-ASSOCIATE-RQ/AC bodies: real ones are about 17.5 KB at
#: most (128 contexts with a few transfer syntaxes each; HARDENING P05).
DEFAULT_MAX_OTHER_LENGTH = 1024 * 1024


def _invalid_length(message: str) -> PDUDecodeError:
    """Build the error for an unacceptable PDU-length (A-ABORT reason 6).

    :param message: what was wrong, for the log.
    :returns: a :class:`PDUDecodeError` with reason INVALID_PDU_PARAMETER_VALUE.
    """
    return PDUDecodeError(AbortReason.INVALID_PDU_PARAMETER_VALUE, message)


class PDUBuffer:
    """Frame a byte stream into decoded PDUs, enforcing length caps early.

    :param max_pdata_length: the largest P-DATA-TF PDU-length accepted, i.e.
        the Maximum Length we advertised (PS3.8 D.1); 0 means no limit.  It is
        a plain attribute so the association can set it once negotiated.
    :param max_other_length: the largest PDU-length accepted for the other
        PDU types (in practice A-ASSOCIATE-RQ/AC).
    """

    def __init__(self, max_pdata_length: int, max_other_length: int = DEFAULT_MAX_OTHER_LENGTH) -> None:
        #: Cap on P-DATA-TF PDU-length; 0 means no limit. Settable.
        self.max_pdata_length = max_pdata_length
        #: Cap on every other PDU's PDU-length.
        self.max_other_length = max_other_length
        # Received pieces not yet consumed, oldest first, never joined early.
        self._chunks: deque[bytes] = deque()
        # Bytes of _chunks[0] already consumed.
        self._offset = 0
        # Unconsumed bytes across _chunks.
        self._size = 0
        # Header of the PDU being assembled: type and declared body length;
        # _type is None while waiting for a header.
        self._type: int | None = None
        self._length = 0
        # Set after the first error: all further input is dropped.
        self._dead = False

    @property
    def buffered(self) -> int:
        """The number of bytes held that do not yet form a whole PDU.

        This includes the 6 header bytes of a PDU whose body is incomplete.
        """
        if self._dead:
            return 0
        return self._size + (PDU_HEADER_LENGTH if self._type is not None else 0)

    @property
    def dead(self) -> bool:
        """Whether an error has been reported, after which input is dropped."""
        return self._dead

    def feed(self, data: bytes) -> list[PDU | PDUDecodeError]:
        """Add received bytes and return every PDU they complete, in order.

        :param data: bytes as read from the transport (any size, even empty).
        :returns: the decoded PDUs; if the stream turned out malformed, the
            :class:`PDUDecodeError` is the last element and the buffer is
            dead (every later call returns ``[]``).
        """
        if self._dead:
            return []
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)
        out: list[PDU | PDUDecodeError] = []
        while True:
            if self._type is None:
                # Waiting for a header: judge the type byte as soon as it is in.
                if self._size == 0:
                    break
                first = self._chunks[0][self._offset]
                if first not in _KNOWN_TYPES:
                    # PS3.8 9.3.1 / HARDENING P03, P04, P27: not a DICOM PDU.
                    return self._die(
                        out,
                        PDUDecodeError(AbortReason.UNRECOGNIZED_PDU, f"unrecognized PDU type 0x{first:02X}"),
                    )
                if self._size < PDU_HEADER_LENGTH:
                    break
                pdu_type, _reserved, length = PDU_HEADER.unpack(self._take(PDU_HEADER_LENGTH))
                # HARDENING R4: refuse the length before buffering any body.
                error = self._check_length(pdu_type, length)
                if error is not None:
                    return self._die(out, error)
                self._type, self._length = pdu_type, length
            # Waiting for the body: do nothing until all of it is here.
            if self._size < self._length:
                break
            body = self._take(self._length)
            pdu_type = self._type
            self._type = None
            try:
                out.append(decode(pdu_type, body))
            except PDUDecodeError as error:
                return self._die(out, error)
        return out

    def _check_length(self, pdu_type: int, length: int) -> PDUDecodeError | None:
        """Judge a declared PDU-length against the caps and the PDU's shape.

        :param pdu_type: a known PDU type (1..7).
        :param length: the PDU-length field.
        :returns: the error to report, or ``None`` if the length is acceptable.
        """
        if pdu_type == PDUType.P_DATA_TF:
            # PS3.8 D.1: the peer must respect our Maximum Length (HARDENING P20).
            if self.max_pdata_length and length > self.max_pdata_length:
                return _invalid_length(
                    f"P-DATA-TF length {length} exceeds the maximum {self.max_pdata_length}"
                )
            # PS3.8 9.3.5: at least one PDV item of at least 6 bytes (HARDENING P21).
            if length < PDV_HEADER_LENGTH:
                return _invalid_length(f"P-DATA-TF length {length} cannot hold a PDV item")
            return None
        if pdu_type in _SHORT_TYPES:
            # HARDENING P28: these bodies are exactly 4 bytes.
            if length != SHORT_PDU_BODY_LENGTH:
                return _invalid_length(f"{PDUType(pdu_type).name} length {length}; it must be 4")
            return None
        # A-ASSOCIATE-RQ/AC: bounded above by the cap (HARDENING P05) and below
        # by the 68-byte fixed part (P06).
        if length > self.max_other_length:
            return _invalid_length(
                f"{PDUType(pdu_type).name} length {length} exceeds the maximum {self.max_other_length}"
            )
        if length < ASSOCIATE_FIXED_LENGTH:
            return _invalid_length(f"{PDUType(pdu_type).name} length {length} is below the fixed 68 bytes")
        return None

    def _die(self, out: list[PDU | PDUDecodeError], error: PDUDecodeError) -> list[PDU | PDUDecodeError]:
        """Report ``error`` after ``out`` and drop everything held.

        :param out: the PDUs decoded so far in this call.
        :param error: the fault.
        :returns: ``out`` with ``error`` appended.
        """
        self._dead = True
        self._chunks.clear()
        self._offset = 0
        self._size = 0
        self._type = None
        out.append(error)
        return out

    def _take(self, count: int) -> bytes:
        """Remove and return the next ``count`` bytes; the caller checked they are held.

        At most one copy is made: a slice of one chunk, or one join over
        memoryviews of several; a chunk that is exactly the request is
        returned as is.

        :param count: how many bytes.
        :returns: those bytes.
        """
        self._size -= count
        first = self._chunks[0]
        available = len(first) - self._offset
        if available >= count:
            # Common case: the request lies in the first chunk.
            if self._offset == 0 and count == len(first):
                self._chunks.popleft()
                return first
            piece = first[self._offset : self._offset + count]
            self._offset += count
            if self._offset == len(first):
                self._chunks.popleft()
                self._offset = 0
            return piece
        # The request spans chunks: gather views, then join once.
        parts: list[memoryview] = [memoryview(first)[self._offset :]]
        self._chunks.popleft()
        self._offset = 0
        needed = count - available
        while needed:
            chunk = self._chunks[0]
            if len(chunk) <= needed:
                # The whole chunk belongs to this request.
                parts.append(memoryview(chunk))
                self._chunks.popleft()
                needed -= len(chunk)
            else:
                # Only its head does; the rest stays for the next request.
                parts.append(memoryview(chunk)[:needed])
                self._offset = needed
                needed = 0
        return b"".join(parts)
