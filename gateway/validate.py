"""Walk a data set's element structure as its bytes arrive, without decoding its values.

Before the gateway acknowledges a C-STORE it must know that the bytes it
stored are a data set at all (DESIGN.md 5, HARDENING D01-D03, D08, D09, D18).
Decoding the whole data set with pydicom would be slow, recursive, and would
read large values into memory. This module does the minimum instead: it reads
every element *header* (tag, VR, length), checks it against the encoding
rules of PS3.5, and skips over the value.

The walk is incremental (issue 13, "do the work while the bytes arrive"): a
:class:`DatasetWalker` is fed the data set's bytes fragment by fragment as
the network delivers them, in any split, and :meth:`DatasetWalker.finish`
gives the summary at the end. :func:`walk_dataset` walks a file by feeding
it to a walker, so there is one implementation of the rules.

Theory of operation
-------------------
The walk is a loop over a stack of frames, never a recursion, so a 1,100-level
nested sequence (HARDENING D02, the IC-DCMTK-0003 shape) costs a list of 2,200
small objects, not 2,200 Python stack frames. A frame is one of:

``_DATASET``
    the top-level data set, or one item of a sequence. It holds elements in
    strictly ascending tag order (PS3.5 7.1), ends at its defined length, at
    an Item Delimitation Item (FFFE,E00D) if its length is undefined
    (PS3.5 7.5.2), or at the end of the input for the top level.
``_SEQUENCE``
    the value of an SQ element (or of a UN element of undefined length, whose
    content is Implicit VR Little Endian, PS3.5 6.2.2). It holds only Items
    (FFFE,E000) and, if its length is undefined, ends with a Sequence
    Delimitation Item (FFFE,E0DD) (PS3.5 7.5.1).
``_FRAGMENTS``
    encapsulated Pixel Data (7FE0,0010) of undefined length: the Basic Offset
    Table item and fragment items, each of defined length, then a Sequence
    Delimitation Item (PS3.5 A.4).

Every frame knows its ``limit``: the end of the nearest enclosing value of
defined length. A header or value that would run past the limit is an error:
no element may escape its enclosing item, sequence or the data set (D01,
D03). Because each defined length is checked against the limit before
anything is skipped, a declared length of 0xFFFFFFF0 costs nothing (no
allocation, no read: HARDENING R4).

*Feeding.* Each loop step needs the bytes of one header (8 or 12, PS3.5
7.1.2/7.1.3), or for the handful of values we read, header and value. When
a fed piece ends inside a header, the few bytes are kept and the step runs
again on the next feed; a step changes no state until it has its bytes, so
it can always be re-run. A value is skipped by counting: the part not yet
fed becomes a *pending skip* that later feeds pay off, and a feed that lies
wholly inside a pending skip costs a comparison and two additions
(:meth:`DatasetWalker.feed`'s fast path). Skipped bytes are never kept, so
a walker holds a few small buffers whatever the size of the instance.

*The unknown end.* The top-level data set ends where the input ends, which
a walker learns only at :meth:`~DatasetWalker.finish`: the top frame's limit
is infinite while bytes arrive. The rules that compare with the end are
therefore settled at the end, giving the same outcome and the same Error
Comment as a walk that knew the end up front:

- a value, or a frame of defined length opened at the top (or inside
  undefined-length sequences from the top), that runs past the end is the
  "runs past the end of the data set" error at :meth:`finish`, when its
  pending skip or its frame is still open;
- an error found *inside* such a frame (call it F, the outermost open frame
  of defined length) is only provisional while F's end has not been passed:
  if the data set turns out to end before F does, F's own length is the
  first broken rule, as a walk knowing the end would have said. The walker
  then just counts bytes, and raises the error from the first feed that
  passes F's end, or from :meth:`finish`. The same holds for a rule that
  the header of such an element breaks after its length (an item where a
  delimiter belongs, a tag out of order, a read value too long): the file
  walk checked the length first;
- whether an overrun names its enclosing element or "the data set" depends
  on whether that element ends exactly where the data set does
  (:class:`_Overrun`), settled the same way.

Deflated data sets (PS3.5 A.5) have no such deferral: their inflated size is
unknown even to a file walk, so their errors are raised as found.

*Deflate.* A Deflated Explicit VR Little Endian data set (PS3.5 A.5) is
inflated as the compressed bytes arrive, with a cap on the inflated size
(HARDENING D09); output is pulled :data:`_CHUNK` bytes at a time and walked
at once, so a bomb costs one chunk of memory. The compressed stream is handed
to zlib in blocks of :data:`_ZBLOCK` bytes aligned on the stream's start,
whatever the fed split, each block's output pulled a chunk at a time: what
zlib reports (corrupt data, the cap), and what output a failing call takes
with it, then does not depend on how the network cut the bytes, and is what
the file walk (which read the file in such blocks) reported. The price: a
deflated data set's error is raised by the feed that completes its block (at
most :data:`_ZBLOCK` compressed bytes late) or by ``finish``, and a partial
block is kept (at most 64 KiB).

*Header capture.* For routing, the walker keeps the top-level data set bytes
before the pixel data (any of (7FE0,0008), (7FE0,0009), (7FE0,0010), where
pydicom's ``stop_before_pixels`` stops), or the whole data set if it has
none, in their encoding (inflated for a deflated data set), as long as they
fit in ``header_cap`` (:attr:`DatasetSummary.header`). It holds at most
``header_cap + 1`` bytes, and drops them as soon as the walk passes the cap.

Values are read only for a handful of small top-level attributes that the
gateway needs before the acknowledgement (SOP Class and Instance UID, Study
and Series Instance UID, Modality). Their absence is **not** an error here
(D05): the caller decides, because the status to answer is policy.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Final

from gateway.vrfacts import LONG_VR_CODES, SHORT_VR_CODES

__all__ = ["DatasetSummary", "DatasetWalker", "MalformedDataset", "walk_dataset"]


# -- Transfer syntaxes (PS3.5 10, Annex A) ----------------------------------

#: PS3.5 A.1: Implicit VR Little Endian, the default transfer syntax.
_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
#: PS3.5 A.3 (retired, still received): Explicit VR Big Endian.
_EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
#: PS3.5 A.5 Deflated Explicit VR Little Endian, and A.6 JPIP Referenced
#: Deflate, whose data set is deflated the same way.
_DEFLATED: Final = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
# Every other transfer syntax, including all the encapsulated (compressed)
# ones, encodes the data set in Explicit VR Little Endian (PS3.5 A.2, A.4).

# Encodings a frame can be in. UN of undefined length switches to Implicit
# VR Little Endian whatever the outer encoding (PS3.5 6.2.2).
_IMPLICIT_LE: Final = 0
_EXPLICIT_LE: Final = 1
_EXPLICIT_BE: Final = 2

# -- Value representations (PS3.5 Table 6.2-1 and 7.1.2) --------------------

# The explicit-VR header forms (PS3.5 7.1.2): :mod:`gateway.vrfacts`.
_LONG_VRS: Final = LONG_VR_CODES
_SHORT_VRS: Final = SHORT_VR_CODES

# -- Tags ---------------------------------------------------------------------

#: PS3.5 7.5: Item, Item Delimitation Item, Sequence Delimitation Item.
_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITER: Final = 0xFFFEE00D
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
#: (7FE0,0010) Pixel Data, which alone may be encapsulated (PS3.5 A.4).
_PIXEL_DATA: Final = 0x7FE00010
#: (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data and
#: (7FE0,0010) Pixel Data: the header capture stops at the first of them,
#: where pydicom's ``stop_before_pixels`` stops (see :mod:`gateway.parse`).
_PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: PS3.5 7.1.2: the Value Length 0xFFFFFFFF means "undefined length".
_UNDEFINED: Final = 0xFFFFFFFF

# Top-level attributes whose values are read into the summary.
_SOP_CLASS_UID: Final = 0x00080016
_SOP_INSTANCE_UID: Final = 0x00080018
_MODALITY: Final = 0x00080060
_STUDY_INSTANCE_UID: Final = 0x0020000D
_SERIES_INSTANCE_UID: Final = 0x0020000E
_ACCESSION_NUMBER: Final = 0x00080050
_PATIENT_ID: Final = 0x00100020
_STUDY_DATE: Final = 0x00080020
# Issue 18: what a notifying route's study note needs (IS values, read as text).
_SERIES_NUMBER: Final = 0x00200011
_STUDY_RELATED_INSTANCES: Final = 0x00201208
_READ_TAGS: Final = frozenset(
    {
        _SOP_CLASS_UID,
        _SOP_INSTANCE_UID,
        _MODALITY,
        _STUDY_INSTANCE_UID,
        _SERIES_INSTANCE_UID,
        _ACCESSION_NUMBER,
        _PATIENT_ID,
        _STUDY_DATE,
        _SERIES_NUMBER,
        _STUDY_RELATED_INSTANCES,
    }
)
#: The largest of those values we read; UIDs are at most 64 bytes (PS3.5
#: 9.1), and CS 16, but peers send nonconformant values (D06), so be lenient.
_MAX_READ_VALUE: Final = 1024

# Frame kinds (see the theory of operation).
_DATASET: Final = 0
_SEQUENCE: Final = 1
_FRAGMENTS: Final = 2

#: Bytes read from the file, or inflated, at a time.
_CHUNK: Final = 64 * 1024
#: Compressed bytes handed to zlib per call, aligned on the stream's start
#: (see *Deflate* in the theory of operation): the file walk's read size.
_ZBLOCK: Final = 64 * 1024
#: Bytes of a new piece joined to a kept partial header: more than any one
#: step needs (a 12-byte header and a read value of :data:`_MAX_READ_VALUE`).
_STITCH: Final = 4096
#: The top-level limit while the data set's end is unknown.
_INFINITE: Final = float("inf")
#: The default ``header_cap``: 4 MiB.
_HEADER_CAP: Final = 4 << 20
#: The transfer syntax an inflated data set is parsed with (PS3.5 A.5: the
#: deflated bytes are an Explicit VR Little Endian data set).
_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"

# Precompiled header layouts: tag group, tag element, then either a 32-bit
# length (items, implicit VR) or VR + 16-bit length (explicit short form).
_HHI_LE = struct.Struct("<HHI")
_HHI_BE = struct.Struct(">HHI")
_HH2SH_LE = struct.Struct("<HH2sH")
_HH2SH_BE = struct.Struct(">HH2sH")
_I_LE = struct.Struct("<I")
_I_BE = struct.Struct(">I")


@dataclass(frozen=True)
class DatasetSummary:
    """What the walk learned about a structurally valid data set.

    :ivar sop_class_uid: top-level (0008,0016), or ``None`` if absent.
    :ivar sop_instance_uid: top-level (0008,0018), or ``None`` if absent.
    :ivar study_instance_uid: top-level (0020,000D), or ``None``.
    :ivar series_instance_uid: top-level (0020,000E), or ``None``.
    :ivar modality: top-level (0008,0060), or ``None``.
    :ivar accession_number: top-level (0008,0050), or ``None`` (for ``find``).
    :ivar patient_id: top-level (0010,0020), or ``None`` (for ``find``).
    :ivar study_date: top-level (0008,0020), or ``None``.
    :ivar series_number: top-level (0020,0011) Series Number as text (IS), or ``None`` (study notes, issue 18).
    :ivar study_related_instances: top-level (0020,1208) Number of Study Related Instances as text (IS), or ``None``.
    :ivar element_count: element, item and delimiter headers walked.
    :ivar pixel_data_offset: offset in the file of the top-level (7FE0,0010)
        tag, or ``None`` if absent or if the data set is deflated (the offset
        would not address the file).
    :ivar header: the top-level data set bytes before the pixel data (the
        whole data set if it has none), inflated if the data set is deflated;
        ``None`` if they did not fit in the walker's ``header_cap``.
    :ivar header_transfer_syntax: the transfer syntax to parse ``header``
        with: the data set's own, or Explicit VR Little Endian for a deflated
        one (PS3.5 A.5). ``None`` when the walk captured no header.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None
    element_count: int
    pixel_data_offset: int | None
    accession_number: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    header: bytes | None = None
    header_transfer_syntax: str | None = None
    series_number: str | None = None
    study_related_instances: str | None = None


class MalformedDataset(Exception):
    """The data set breaks an encoding rule of PS3.5.

    :ivar comment: a human-readable sentence naming the element and offset.
    """

    #: PS3.7 C.4.2.1.2 Error Comment (0000,0902) is LO: at most 64 characters.
    MAX_COMMENT: Final = 64

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment

    @property
    def short_comment(self) -> str:
        """
        The comment cut to fit an Error Comment (LO, at most 64 characters).

        :returns: ``comment`` itself if it fits, else its start and ``...``.
        """
        if len(self.comment) <= self.MAX_COMMENT:
            return self.comment
        return self.comment[: self.MAX_COMMENT - 3] + "..."


def _tag_text(tag: int) -> str:
    """
    Format a tag the way the standard prints it.

    :param tag: the tag as ``group << 16 | element``.
    :returns: ``"(gggg,eeee)"`` in upper-case hexadecimal.
    """
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _past_end(tag: int, length: int, where: str, pos: int) -> MalformedDataset:
    """
    The error for a value that runs past the end of its enclosing value.

    :param tag: the element's (or item's) tag.
    :param length: its declared value length.
    :param where: ``"data set"`` or the enclosing element's tag text.
    :param pos: the position of its header.
    :returns: the error.
    """
    return MalformedDataset(f"{_tag_text(tag)} length {length} runs past the end of the {where} at {pos}")


class _Overrun(MalformedDataset):
    """A value runs past its enclosing value's end (PS3.5 7.5.1, 7.5.2).

    The comment names the enclosing element, unless that value ends exactly
    where the data set ends: a walk that knows the end then says "data set"
    (the end is the tighter bound it checked against). While bytes arrive
    the walker does not know which; :meth:`settled` decides.

    :param tag: the overrunning element's tag.
    :param length: its length.
    :param pos: its header's position.
    :param owner: the tag of the enclosing element.
    :param limit: the enclosing value's end.
    """

    def __init__(self, tag: int, length: int, pos: int, owner: int, limit: float) -> None:
        super().__init__(_past_end(tag, length, _tag_text(owner), pos).comment)
        self.tag = tag
        self.length = length
        self.pos = pos
        self.limit = limit

    def settled(self, total: int | None) -> MalformedDataset:
        """
        The error as a walk knowing the data set's end reports it.

        :param total: where the data set ends, or ``None`` if it is only
            known to end after :attr:`limit`.
        :returns: a plain :class:`MalformedDataset`.
        """
        if total is not None and self.limit == total:
            return _past_end(self.tag, self.length, "data set", self.pos)
        return MalformedDataset(self.comment)


class _Frame:
    """One level of the walk (see the theory of operation).

    :ivar kind: ``_DATASET``, ``_SEQUENCE`` or ``_FRAGMENTS``.
    :ivar end: the position where a defined-length frame ends, else ``None``.
    :ivar limit: the end of the nearest enclosing defined-length value.
    :ivar encoding: ``_IMPLICIT_LE``, ``_EXPLICIT_LE`` or ``_EXPLICIT_BE``.
    :ivar owner: the tag of the element (or item) that opened the frame.
    :ivar last_tag: in a data set, the last tag seen (ascending order check).
    :ivar tag: the tag of the header that opened the frame (an item's is
        (FFFE,E000)), for the error if its defined length runs past the end.
    :ivar length: that header's value length.
    :ivar pos: that header's position.
    """

    __slots__ = ("kind", "end", "limit", "encoding", "owner", "last_tag", "tag", "length", "pos")

    def __init__(
        self,
        kind: int,
        end: int | None,
        limit: float,
        encoding: int,
        owner: int,
        tag: int = 0,
        length: int = 0,
        pos: int = 0,
    ) -> None:
        self.kind = kind
        self.end = end
        self.limit = limit
        self.encoding = encoding
        self.owner = owner
        self.last_tag = -1
        self.tag = tag
        self.length = length
        self.pos = pos


def _decode_value(raw: bytes) -> str:
    """
    Decode a small text value read from the data set.

    ISO 8859-1 maps every byte to one character, so nonconformant bytes
    survive unchanged (D06) and compare equal to command-set values decoded
    the same way. UI padding (NUL) and text padding (space) are removed
    (PS3.5 6.2).

    :param raw: the value bytes.
    :returns: the decoded, unpadded value.
    """
    return raw.strip(b" \x00").decode("latin-1")


_Bytes = bytes | bytearray | memoryview


class DatasetWalker:
    """Walk one data set fed in pieces as they arrive (see the theory of operation).

    ``feed`` each piece of the data set in order (any split, from one byte to
    megabytes), then call ``finish`` once at its end. An error raised by
    either is final: the walker stays failed, and every later ``feed`` or
    ``finish`` raises the same :class:`MalformedDataset` again.

    :param transfer_syntax_uid: the transfer syntax the data set is encoded in.
    :param max_depth: the deepest sequence nesting allowed (D02).
    :param max_elements: the most headers walked before giving up (D18).
    :param max_inflated_size: for a deflated data set, the largest inflated
        size allowed (D09); ``None`` for no cap.
    :param allow_odd_lengths: accept odd value lengths. PS3.5 7.1.1 makes
        every value length even and lists no exception; this switch exists
        for sites that must accept a known broken modality.
    :param header_cap: the largest header kept for routing
        (:attr:`DatasetSummary.header`).
    :param start_offset: the position of the data set's first byte in its
        file: positions in error comments and ``pixel_data_offset`` count
        from it, as :func:`walk_dataset`'s do. Ignored for a deflated data
        set, whose positions count inflated bytes from 0.
    """

    def __init__(
        self,
        transfer_syntax_uid: str,
        *,
        max_depth: int = 64,
        max_elements: int = 1_000_000,
        max_inflated_size: int | None = None,
        allow_odd_lengths: bool = False,
        header_cap: int = _HEADER_CAP,
        start_offset: int = 0,
    ) -> None:
        ts = transfer_syntax_uid.rstrip("\x00 ")
        self._deflated = ts in _DEFLATED
        if self._deflated:
            encoding = _EXPLICIT_LE
            start_offset = 0
            self._inflater: zlib._Decompress | None = zlib.decompressobj(-15)
            self._header_syntax = _EXPLICIT_VR_LE
        else:
            encoding = {_IMPLICIT_VR_LE: _IMPLICIT_LE, _EXPLICIT_VR_BE: _EXPLICIT_BE}.get(
                ts, _EXPLICIT_LE
            )
            self._inflater = None
            self._header_syntax = ts
        self._max_depth = max_depth
        self._max_elements = max_elements
        self._cap = max_inflated_size
        self._allow_odd = allow_odd_lengths
        self._header_cap = header_cap
        self._origin = start_offset
        # The walk's state (see the theory of operation).
        self._stack = [_Frame(_DATASET, None, _INFINITE, encoding, 0)]
        self._depth = 0
        self._count = 0
        self._values: dict[int, str] = {}
        self._pixel_data_offset: int | None = None
        #: The position of ``_buf[0]``; with ``_buf`` empty, of the next byte.
        self._base = start_offset
        #: The start of a header whose bytes have not all arrived.
        self._buf = b""
        #: Bytes still to skip of the value being skipped.
        self._skip = 0
        #: The header of the value being skipped: tag, length, position, and
        #: whether it is a pixel data fragment (for the error at the end).
        self._leaf = (0, 0, 0, False)
        #: An error found inside a frame that may yet run past the end, and
        #: that frame (see *The unknown end*).
        self._provisional: tuple[MalformedDataset, _Frame] | None = None
        self._error: MalformedDataset | None = None
        #: Set by a failing step whose own length was not yet checked.
        self._unchecked: _Frame | None = None
        self._summary: DatasetSummary | None = None
        # Header capture: the first header_cap + 1 bytes, until decided.
        self._capture: bytearray | None = bytearray()
        self._header: bytes | None = None
        # Deflate: the compressed bytes of a block not yet complete, and the
        # inflated size so far.
        self._zcarry = bytearray()
        self._inflated = 0

    # -- Public interface ---------------------------------------------------------

    @property
    def retained_bytes(self) -> int:
        """
        The data set bytes the walker holds: a partial header, a partial
        deflate block, and the header capture while it is being decided.

        zlib's own window (32 KiB) and one inflated chunk in flight are not
        counted.

        :returns: the byte count.
        """
        capture = self._capture
        return (
            len(self._buf)
            + len(self._zcarry)
            + (len(capture) if capture is not None else 0)
            + (len(self._header) if self._header is not None else 0)
        )

    def feed(self, data: _Bytes) -> None:
        """
        Walk the next piece of the data set.

        :param data: the bytes that follow the ones already fed; not kept
            after the call returns (what the walker keeps, it copies).
        :raises MalformedDataset: as soon as the bytes fed so far prove the
            data set malformed, whatever the bytes that follow; again on every
            call once raised.
        :raises ValueError: after :meth:`finish`.
        """
        n = len(data)
        skip = self._skip
        # The fast path: the piece lies wholly inside a skipped value.
        if skip >= n and self._capture is None and self._inflater is None:
            if self._error is not None:
                raise MalformedDataset(self._error.comment)
            self._skip = skip - n
            self._base += n
            return
        if self._error is not None:
            raise MalformedDataset(self._error.comment)
        if self._summary is not None:
            raise ValueError("feed() after finish()")
        view = data if isinstance(data, memoryview) else memoryview(data)
        if self._inflater is not None:
            self._inflate(view)
        else:
            self._consume(view)

    def finish(self) -> DatasetSummary:
        """
        End the data set: settle what only its end can prove.

        :returns: the summary of a structurally valid data set.
        :raises MalformedDataset: at the first rule broken (a truncated
            header, a value or item running past the end of the data set, a
            truncated deflate stream, ...).
        """
        if self._error is not None:
            raise MalformedDataset(self._error.comment)
        if self._summary is not None:
            return self._summary
        if self._inflater is not None:
            self._finish_inflating()
        total = self._base + len(self._buf)
        provisional = self._provisional
        if provisional is not None:
            self._fail(provisional[0], total)
        self._check_no_skip(total)
        buf, self._buf = self._buf, b""
        self._walk_guarded(memoryview(buf), total)
        # (The kept bytes end inside a header or a read value, so the last
        # walk cannot leave a skip; checked all the same.)
        self._check_no_skip(total)
        self._decide_header(total)
        values = self._values
        self._summary = DatasetSummary(
            sop_class_uid=values.get(_SOP_CLASS_UID),
            sop_instance_uid=values.get(_SOP_INSTANCE_UID),
            study_instance_uid=values.get(_STUDY_INSTANCE_UID),
            series_instance_uid=values.get(_SERIES_INSTANCE_UID),
            modality=values.get(_MODALITY),
            accession_number=values.get(_ACCESSION_NUMBER),
            patient_id=values.get(_PATIENT_ID),
            study_date=values.get(_STUDY_DATE),
            series_number=values.get(_SERIES_NUMBER),
            study_related_instances=values.get(_STUDY_RELATED_INSTANCES),
            element_count=self._count,
            pixel_data_offset=self._pixel_data_offset,
            header=self._header,
            header_transfer_syntax=self._header_syntax if self._header is not None else None,
        )
        return self._summary

    def _check_no_skip(self, total: int) -> None:
        """
        At the end: a value still being skipped runs past the end of the data set.

        :param total: the data set's end.
        :raises MalformedDataset: if a skip is pending.
        """
        if self._skip:
            tag, length, pos, fragment = self._leaf
            if self._deflated and fragment:
                self._fail(MalformedDataset(f"pixel data fragment at {pos} is truncated"), total)
            self._fail(_past_end(tag, length, "data set", pos), total)

    # -- Feeding ------------------------------------------------------------------

    def _pending_skip(self) -> int:
        """
        How many of the next bytes :meth:`_advance` may count without them.

        :returns: the pending skip when nothing would look at those bytes
            (not deflated, no header capture), else 0.
        """
        if self._capture is not None or self._inflater is not None or self._error is not None:
            return 0
        return self._skip

    def _advance(self, n: int) -> None:
        """
        Count ``n`` bytes of a pending skip that the caller sought over.

        :param n: at most :meth:`_pending_skip`.
        """
        assert 0 <= n <= self._pending_skip()
        self._skip -= n
        self._base += n

    def _consume(self, data: memoryview) -> None:
        """
        Walk a piece of the (inflated) data set.

        :param data: the piece.
        :raises MalformedDataset: as :meth:`feed`.
        """
        capture = self._capture
        if capture is not None:
            room = self._header_cap + 1 - len(capture)
            if room > 0:
                capture += data[:room]
        while data:
            skip = self._skip
            if skip:
                n = len(data)
                if skip >= n:
                    self._skip = skip - n
                    self._base += n
                    break
                self._skip = 0
                self._base += skip
                data = data[skip:]
            if self._provisional is not None:
                # The frame that might have run past the end did not.
                self._fail(self._provisional[0], None)
            if self._buf:
                # Finish the kept partial header with the first bytes of the
                # piece; the rest is walked as if it were the next piece.
                piece: _Bytes = self._buf + bytes(data[:_STITCH])
                data = data[_STITCH:]
                self._buf = b""
            else:
                piece, data = data, data[:0]
            self._walk_guarded(memoryview(piece), None)
        if self._provisional is not None and not self._skip:
            self._fail(self._provisional[0], None)
        if self._capture is not None and self._base - self._origin > self._header_cap:
            # Everything up to past the cap was walked without pixel data.
            self._capture = None
            self._header = None

    def _walk_guarded(self, piece: memoryview, total: int | None) -> None:
        """
        Walk ``piece``, applying the unknown-end rule to any error.

        :param piece: the bytes.
        :param total: the data set's end at :meth:`finish`, else ``None``.
        :raises MalformedDataset: as :meth:`feed`.
        """
        self._unchecked = None
        try:
            self._walk(piece, total is not None)
        except MalformedDataset as e:
            self._fail(e, total, self._unchecked)

    def _fail(self, error: MalformedDataset, total: int | None, unchecked: _Frame | None = None) -> None:
        """
        Raise ``error``, or keep it provisional (see *The unknown end*).

        :param error: the rule found broken.
        :param total: the data set's end at :meth:`finish`, else ``None``.
        :param unchecked: the element whose header broke the rule, if its
            length was not yet checked against the end (its ``end``, ``tag``,
            ``length`` and ``pos`` are used).
        :raises MalformedDataset: unless the error is kept provisional.
        """
        # Kept errors keep no traceback: its frames would keep the fed
        # pieces (memoryviews of the caller's buffers) alive.
        error.__traceback__ = None
        if not self._deflated:
            outer = next((f for f in self._stack if f.end is not None), unchecked)
            if self._provisional is not None:
                outer = self._provisional[1]
            if outer is not None and outer.end is not None:
                received = self._base + len(self._buf)
                if total is None and received <= outer.end:
                    # The data set might end before ``outer`` does: count.
                    self._provisional = (error, outer)
                    self._base = received
                    self._buf = b""
                    self._skip = outer.end - received + 1
                    return
                if total is not None and outer.end > total:
                    error = _past_end(outer.tag, outer.length, "data set", outer.pos)
        if isinstance(error, _Overrun):
            error = error.settled(total)
        self._error = MalformedDataset(error.comment)
        self._provisional = None
        self._buf = b""
        self._capture = None
        try:
            raise error
        finally:
            del error  # no cycle through this frame: the pieces are freed with the error

    def _inflate(self, data: memoryview) -> None:
        """
        Inflate compressed bytes in blocks aligned on the stream's start.

        :param data: the next compressed bytes.
        :raises MalformedDataset: as :meth:`feed`.
        """
        inflater = self._inflater
        assert inflater is not None
        if inflater.eof:
            return  # bytes after the end of the deflate stream are ignored
        carry = self._zcarry
        if carry:
            need = _ZBLOCK - len(carry)
            if len(data) < need:
                carry += data
                return
            carry += data[:need]
            self._zcarry = bytearray()
            self._inflate_block(carry)
            data = data[need:]
        whole = len(data) - len(data) % _ZBLOCK
        for at in range(0, whole, _ZBLOCK):
            if inflater.eof:
                return
            self._inflate_block(data[at : at + _ZBLOCK])
        if whole < len(data) and not inflater.eof:
            self._zcarry = bytearray(data[whole:])

    def _inflate_block(self, block: _Bytes) -> None:
        """
        Inflate one block and walk its output, a chunk at a time (D09).

        PS3.5 A.5: the data set is compressed with the Deflate algorithm of
        RFC 1951, without zlib header or checksum, hence ``wbits=-15``.

        :param block: compressed bytes.
        :raises MalformedDataset: if the stream is corrupt or inflates past
            the cap, or as :meth:`feed`.
        """
        inflater = self._inflater
        assert inflater is not None
        cap = self._cap
        pending: _Bytes = block
        while True:
            try:
                out = inflater.decompress(pending, _CHUNK)
            except zlib.error as e:
                self._fail(MalformedDataset(f"deflated data set is corrupt: {e}"), None)
                raise  # pragma: no cover (a deflated walk's errors are never provisional)
            self._inflated += len(out)
            if cap is not None and self._inflated > cap:
                self._fail(MalformedDataset(f"deflated data set inflates past {cap} bytes"), None)
            if out:
                self._consume(memoryview(out))
            if inflater.eof:
                return
            pending = inflater.unconsumed_tail
            if not pending:
                return

    def _finish_inflating(self) -> None:
        """
        Inflate the last partial block and check the stream ended.

        :raises MalformedDataset: if the stream is truncated or corrupt.
        """
        inflater = self._inflater
        assert inflater is not None
        if not inflater.eof:
            carry, self._zcarry = self._zcarry, bytearray()
            if carry:
                self._inflate_block(carry)
        if inflater.eof:
            return
        try:
            out = inflater.flush()
        except zlib.error as e:
            self._fail(MalformedDataset(f"deflated data set is corrupt: {e}"), None)
            raise  # pragma: no cover (a deflated walk's errors are never provisional)
        if not inflater.eof:
            self._fail(MalformedDataset("deflated data set is truncated"), None)
        self._inflated += len(out)
        if self._cap is not None and self._inflated > self._cap:
            self._fail(MalformedDataset(f"deflated data set inflates past {self._cap} bytes"), None)
        if out:
            self._consume(memoryview(out))

    def _decide_header(self, total: int) -> None:
        """
        At the end of a data set without pixel data: the header is all of it.

        :param total: the data set's end.
        """
        capture = self._capture
        if capture is not None:
            size = total - self._origin
            self._header = bytes(capture[:size]) if size <= self._header_cap else None
            self._capture = None

    def _found_pixel_data(self, pos: int) -> None:
        """
        The top-level pixel data starts at ``pos``: the header is what came before.

        :param pos: the position of its tag.
        """
        capture = self._capture
        if capture is not None:
            size = pos - self._origin
            self._header = bytes(capture[:size]) if size <= self._header_cap else None
            self._capture = None

    # -- The walk -----------------------------------------------------------------

    def _walk(self, buf: memoryview, at_end: bool) -> None:
        """
        The walk loop itself (see the theory of operation).

        Walks ``buf``, which starts at :attr:`_base`, as far as its bytes go;
        keeps a partial header in :attr:`_buf`, or leaves a pending skip.

        :param buf: the bytes.
        :param at_end: whether the data set ends with ``buf``.
        :raises MalformedDataset: at the first rule broken.
        """
        stack = self._stack
        depth = self._depth
        count = self._count
        max_elements = self._max_elements
        max_depth = self._max_depth
        allow_odd = self._allow_odd
        deflated = self._deflated
        values = self._values
        base = self._base
        size = len(buf)
        off = 0
        try:
            while True:
                frame = stack[-1]
                pos = base + off
                unchecked = False
                # A defined-length frame ends exactly at its end (checked on entry).
                if frame.end is not None and pos >= frame.end:
                    stack.pop()
                    if frame.kind != _DATASET:
                        depth -= 1
                    continue

                # -- Read one header (PS3.5 7.1.1-7.1.3, 7.5). ---------------------
                have = size - off
                if have < 8:
                    if not at_end:
                        break  # the rest of the header comes with the next piece
                    if len(stack) == 1 and have == 0:
                        break  # the top-level data set ends with the input
                    if len(stack) == 1:
                        raise MalformedDataset(f"data set ends inside an element header at {pos}")
                    raise MalformedDataset(f"data set ends inside {_tag_text(frame.owner)} at {pos}")
                if pos + 8 > frame.limit:
                    raise MalformedDataset(
                        f"header at {pos} runs past the end of {_tag_text(frame.owner)}"
                    )
                enc = frame.encoding
                little = enc != _EXPLICIT_BE
                vr = b""
                if enc == _IMPLICIT_LE:
                    # PS3.5 7.1.3: tag and a 32-bit length, no VR.
                    group, element, length = _HHI_LE.unpack_from(buf, off)
                    header = 8
                else:
                    group, element, vr, length = (_HH2SH_LE if little else _HH2SH_BE).unpack_from(
                        buf, off
                    )
                    if group == 0xFFFE:
                        # PS3.5 7.5: items and delimiters have no VR in any encoding.
                        length = (_I_LE if little else _I_BE).unpack_from(buf, off + 4)[0]
                        vr = b""
                        header = 8
                    elif vr in _SHORT_VRS:
                        header = 8
                    elif vr in _LONG_VRS:
                        # PS3.5 7.1.2: two reserved bytes, then a 32-bit length.
                        if have < 12:
                            if not at_end:
                                break
                            raise MalformedDataset(f"element header at {pos} is truncated")
                        if pos + 12 > frame.limit:
                            raise MalformedDataset(f"element header at {pos} is truncated")
                        length = (_I_LE if little else _I_BE).unpack_from(buf, off + 8)[0]
                        header = 12
                    else:
                        raise MalformedDataset(
                            f"invalid VR 0x{vr.hex().upper()} in {_tag_text(group << 16 | element)}"
                            f" at {pos}"
                        )
                tag = group << 16 | element
                count += 1
                if count > max_elements:
                    raise MalformedDataset(f"more than {max_elements} elements at {pos}")
                value_at = pos + header
                undefined = length == _UNDEFINED
                if not undefined:
                    if length & 1 and not allow_odd:
                        # PS3.5 7.1.1: value lengths are even.
                        raise MalformedDataset(f"odd length {length} in {_tag_text(tag)} at {pos}")
                    if value_at + length > frame.limit:
                        raise _Overrun(tag, length, pos, frame.owner, frame.limit)
                    # Against an unknown end the check waits (see *The
                    # unknown end*): the rules below are provisional.
                    unchecked = frame.limit == _INFINITE and not deflated
                kind = frame.kind

                # -- Inside a sequence: only items and the delimiter (PS3.5 7.5.1). --
                if kind == _SEQUENCE:
                    off += header
                    if tag == _ITEM:
                        item_end = None if undefined else value_at + length
                        item_limit = frame.limit if undefined else value_at + length
                        stack.append(
                            _Frame(_DATASET, item_end, item_limit, enc, frame.owner, tag, length, pos)
                        )
                    elif tag == _SEQUENCE_DELIMITER and frame.end is None:
                        if length != 0:
                            raise MalformedDataset(f"sequence delimiter length {length} at {pos}")
                        stack.pop()
                        depth -= 1
                    else:
                        raise MalformedDataset(
                            f"{_tag_text(tag)} in sequence {_tag_text(frame.owner)} at {pos}"
                        )
                    continue

                # -- Encapsulated pixel data: items of defined length (PS3.5 A.4). ---
                if kind == _FRAGMENTS:
                    if tag == _ITEM and not undefined:
                        after = off + header + length
                        if after > size:
                            # The fragment's value continues in later pieces.
                            self._skip = after - size
                            self._leaf = (tag, length, pos, True)
                            off = size
                            break
                        off = after
                    elif tag == _SEQUENCE_DELIMITER:
                        if length != 0:
                            raise MalformedDataset(f"sequence delimiter length {length} at {pos}")
                        off += header
                        stack.pop()
                        depth -= 1
                    else:
                        raise MalformedDataset(f"{_tag_text(tag)} among pixel data fragments at {pos}")
                    continue

                # -- In a data set (top level or an item). -------------------------
                if group == 0xFFFE:
                    # PS3.5 7.5.2: an item of undefined length ends with (FFFE,E00D).
                    if tag == _ITEM_DELIMITER and frame.end is None and len(stack) > 1:
                        if length != 0:
                            raise MalformedDataset(f"item delimiter length {length} at {pos}")
                        off += header
                        stack.pop()
                        continue
                    raise MalformedDataset(f"unexpected {_tag_text(tag)} in a data set at {pos}")
                # PS3.5 7.1: elements of a data set are in ascending tag order, once each.
                last_tag = frame.last_tag
                if tag <= last_tag:
                    raise MalformedDataset(
                        f"{_tag_text(tag)} after {_tag_text(last_tag)}: not ascending, at {pos}"
                    )
                if len(stack) == 1:
                    if tag in _READ_TAGS and not undefined and vr != b"SQ":
                        if length > _MAX_READ_VALUE:
                            raise MalformedDataset(
                                f"{_tag_text(tag)} value of {length} bytes is too long"
                            )
                        if have < header + length:
                            if not at_end:
                                count -= 1  # walked again with its value
                                break
                            if deflated:
                                raise MalformedDataset(f"{_tag_text(tag)} at {pos} is truncated")
                            raise _past_end(tag, length, "data set", pos)
                        start = off + header
                        values[tag] = _decode_value(bytes(buf[start : start + length]))
                    elif tag in _PIXEL_TAGS:
                        if tag == _PIXEL_DATA and not deflated:
                            self._pixel_data_offset = pos
                        self._found_pixel_data(pos)
                frame.last_tag = tag

                if undefined:
                    # PS3.5 7.1.2/7.1.3: only SQ, UN-as-sequence (6.2.2) and
                    # encapsulated Pixel Data (A.4) may have an undefined length.
                    if tag == _PIXEL_DATA and vr in (b"OB", b"OW", b"UN"):
                        child_kind, child_enc = _FRAGMENTS, enc
                    elif tag == _PIXEL_DATA and enc == _IMPLICIT_LE:
                        # PS3.5 A.4: encapsulation needs an explicit VR transfer syntax.
                        raise MalformedDataset(f"encapsulated pixel data in implicit VR at {pos}")
                    elif enc == _IMPLICIT_LE or vr == b"SQ":
                        child_kind, child_enc = _SEQUENCE, enc
                    elif vr == b"UN":
                        child_kind, child_enc = _SEQUENCE, _IMPLICIT_LE
                    else:
                        raise MalformedDataset(
                            f"undefined length on VR {vr.decode('latin-1')} in {_tag_text(tag)}"
                            f" at {pos}"
                        )
                    depth += 1
                    if depth > max_depth:
                        raise MalformedDataset(f"sequences nested deeper than {max_depth} at {pos}")
                    off += header
                    stack.append(_Frame(child_kind, None, frame.limit, child_enc, tag))
                    continue

                if vr == b"SQ":
                    # An explicit SQ of defined length: walk its items within it.
                    depth += 1
                    if depth > max_depth:
                        raise MalformedDataset(f"sequences nested deeper than {max_depth} at {pos}")
                    off += header
                    end = value_at + length
                    stack.append(_Frame(_SEQUENCE, end, end, enc, tag, tag, length, pos))
                    continue

                after = off + header + length
                if after > size:
                    # The value continues in later pieces: skip it by counting.
                    self._skip = after - size
                    self._leaf = (tag, length, pos, False)
                    off = size
                    break
                off = after
        except MalformedDataset:
            if unchecked:
                # The element's own length may yet run past the end.
                self._unchecked = _Frame(_DATASET, value_at + length, 0, 0, 0, tag, length, pos)
            raise
        finally:
            self._depth = depth
            self._count = count
            self._base = base + off
            self._buf = bytes(buf[off:]) if off < size else b""


def walk_dataset(
    fp: BinaryIO,
    transfer_syntax_uid: str,
    *,
    max_depth: int = 64,
    max_elements: int = 1_000_000,
    max_inflated_size: int | None = None,
    allow_odd_lengths: bool = False,
) -> DatasetSummary:
    """
    Check the element structure of the data set from ``fp``'s position to its end.

    The file is fed to a :class:`DatasetWalker` in :data:`_CHUNK` pieces;
    values the walker skips are sought over rather than read (except in a
    deflated data set, which must be inflated to be walked).

    :param fp: a seekable binary file positioned just after the file meta.
    :param transfer_syntax_uid: the transfer syntax the data set is encoded in.
    :param max_depth: the deepest sequence nesting allowed (D02).
    :param max_elements: the most headers walked before giving up (D18).
    :param max_inflated_size: for a deflated data set, the largest inflated
        size allowed (D09); ``None`` for no cap.
    :param allow_odd_lengths: accept odd value lengths (see :class:`DatasetWalker`).
    :returns: the summary of a structurally valid data set (without a header
        capture: ``header`` is ``None`` unless the data set is empty or starts
        with its pixel data).
    :raises MalformedDataset: at the first rule broken.
    """
    start = fp.tell()
    end = fp.seek(0, io.SEEK_END)
    fp.seek(start)
    walker = DatasetWalker(
        transfer_syntax_uid,
        max_depth=max_depth,
        max_elements=max_elements,
        max_inflated_size=max_inflated_size,
        allow_odd_lengths=allow_odd_lengths,
        header_cap=0,
        start_offset=start,
    )
    pos = start
    while True:
        skip = walker._pending_skip()
        if skip > _CHUNK:
            # Seek over the value instead of reading it (never past the end:
            # the walker must learn where the data set ends).
            n = min(skip, end - pos)
            walker._advance(n)
            pos += n
            fp.seek(pos)
        data = fp.read(_CHUNK)
        if not data:
            return walker.finish()
        walker.feed(data)
        pos += len(data)
