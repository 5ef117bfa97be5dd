"""The file walk as it was before issue 13, kept as a test oracle for :mod:`gateway.validate`.

:func:`walk_dataset` here is ``gateway/validate.py`` at commit cd6ded0, unchanged
but for this docstring: it reads a whole file, knowing its end up front. The
incremental :class:`gateway.validate.DatasetWalker` must give the same
summary or the same error comment for every input (interop tests pin the
Error Comments), which ``tests.unit.test_walk_incremental`` checks against
this oracle. Not used by the gateway.

The original module docstring follows.

Walk a spooled data set's element structure without decoding its values.

Before the gateway acknowledges a C-STORE it must know that the bytes it
stored are a data set at all (DESIGN.md 5, HARDENING D01-D03, D08, D09, D18).
Decoding the whole data set with pydicom would be slow, recursive, and would
read large values into memory. This module does the minimum instead: it reads
every element *header* (tag, VR, length), checks it against the encoding
rules of PS3.5, and seeks over the value.

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
defined length (the end of the file for the top level). A header or value
that would run past the limit is an error: no element may escape its
enclosing item, sequence or the file (D01, D03). Because each defined length
is checked against the limit before any seek, a declared length of
0xFFFFFFF0 costs nothing (no allocation, no read: HARDENING R4).

Input is read in 64 KiB chunks into a buffer and headers are decoded with
precompiled :class:`struct.Struct` objects; values are skipped by moving an
offset, or by a seek once they leave the buffer. A Deflated Explicit VR
Little Endian data set (PS3.5 A.5) is inflated as a stream, chunk by chunk,
with a cap on the inflated size (HARDENING D09); skipped values are inflated
and dropped, so memory stays at a few chunks whatever the ratio.

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

__all__ = ["DatasetSummary", "MalformedDataset", "walk_dataset"]


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
    :ivar element_count: element, item and delimiter headers walked.
    :ivar pixel_data_offset: offset in the file of the top-level (7FE0,0010)
        tag, or ``None`` if absent or if the data set is deflated (the offset
        would not address the file).
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


class _FileSource:
    """A chunked, seekable reader over a real file, from its current position.

    ``buf[off]`` is the byte at absolute position ``base + off``.

    :param fp: a binary file positioned at the start of the data set.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.base = fp.tell()
        #: The absolute position of the end of the file.
        self.end = fp.seek(0, io.SEEK_END)
        fp.seek(self.base)
        self.buf = b""
        self.off = 0

    def fill(self, n: int) -> bool:
        """
        Make at least ``n`` bytes available at ``buf[off:]``.

        :param n: the number of bytes wanted.
        :returns: ``False`` if the file ends first.
        """
        buf, off = self.buf, self.off
        have = len(buf) - off
        if have >= n:
            return True
        # Read on from the end of what is buffered, keeping the unread tail.
        self._fp.seek(self.base + len(buf))
        data = self._fp.read(max(n - have, _CHUNK))
        self.buf = buf[off:] + data
        self.base += off
        self.off = 0
        return len(self.buf) >= n

    def pass_over(self, n: int) -> bool:
        """
        Move past ``n`` bytes without reading them.

        Callers check lengths against :attr:`end` first, so this never
        runs past the end of the file.

        :param n: the number of bytes.
        :returns: always ``True`` (the signature matches :class:`_InflatingSource`).
        """
        off = self.off + n
        if off <= len(self.buf):
            self.off = off
        else:
            # Past the buffer: forget it; the next fill() seeks there.
            self.base += off
            self.buf = b""
            self.off = 0
        return True


class _InflatingSource:
    """A chunked reader over a raw-deflate stream, with a cap on its output.

    PS3.5 A.5: the data set is compressed with the Deflate algorithm of RFC
    1951, without zlib header or checksum, hence ``wbits=-15``. Output is
    pulled at most :data:`_CHUNK` bytes at a time (``max_length``), so a bomb
    never inflates more than one chunk beyond what is consumed (D09).

    ``buf[off]`` is the inflated byte at position ``base + off``.

    :param fp: a binary file positioned at the start of the deflated data.
    :param cap: the largest inflated size allowed, or ``None``.
    """

    def __init__(self, fp: BinaryIO, cap: int | None) -> None:
        self._fp = fp
        self._cap = cap
        self._inflater = zlib.decompressobj(-15)
        self._input_done = False
        self._total = 0
        self.base = 0
        self.buf = b""
        self.off = 0
        #: Unknown until the stream ends; lengths are checked when skipping.
        self.end: int | None = None

    def _inflate_some(self) -> bytes:
        """
        Inflate the next non-empty piece of output.

        :returns: up to one chunk of output, or ``b""`` at the end of the stream.
        :raises MalformedDataset: if the stream is corrupt, truncated, or
            inflates past the cap.
        """
        inflater = self._inflater
        while not self._input_done:
            data = inflater.unconsumed_tail or self._fp.read(_CHUNK)
            try:
                if data:
                    out = inflater.decompress(data, _CHUNK)
                else:
                    # No more input: drain what zlib holds and stop.
                    out = inflater.flush()
                    self._input_done = True
                    if not inflater.eof:
                        raise MalformedDataset("deflated data set is truncated")
            except zlib.error as e:
                raise MalformedDataset(f"deflated data set is corrupt: {e}") from None
            self._total += len(out)
            if self._cap is not None and self._total > self._cap:
                raise MalformedDataset(f"deflated data set inflates past {self._cap} bytes")
            if inflater.eof:
                # Bytes after the end of the deflate stream are ignored.
                self._input_done = True
            if out:
                return out
        return b""

    def fill(self, n: int) -> bool:
        """
        Make at least ``n`` inflated bytes available at ``buf[off:]``.

        :param n: the number of bytes wanted.
        :returns: ``False`` if the stream ends first.
        """
        while len(self.buf) - self.off < n:
            out = self._inflate_some()
            if not out:
                return False
            self.buf = self.buf[self.off :] + out
            self.base += self.off
            self.off = 0
        return True

    def pass_over(self, n: int) -> bool:
        """
        Inflate and drop ``n`` bytes.

        :param n: the number of bytes.
        :returns: ``False`` if the stream ends first.
        """
        have = len(self.buf) - self.off
        if n <= have:
            self.off += n
            return True
        remaining = n - have
        self.base += len(self.buf)
        self.buf = b""
        self.off = 0
        while remaining:
            out = self._inflate_some()
            if not out:
                return False
            if len(out) <= remaining:
                remaining -= len(out)
                self.base += len(out)
            else:
                self.buf = out
                self.off = remaining
                remaining = 0
        return True


class _Frame:
    """One level of the walk (see the theory of operation).

    :ivar kind: ``_DATASET``, ``_SEQUENCE`` or ``_FRAGMENTS``.
    :ivar end: the position where a defined-length frame ends, else ``None``.
    :ivar limit: the end of the nearest enclosing defined-length value.
    :ivar encoding: ``_IMPLICIT_LE``, ``_EXPLICIT_LE`` or ``_EXPLICIT_BE``.
    :ivar owner: the tag of the element (or item) that opened the frame.
    :ivar last_tag: in a data set, the last tag seen (ascending order check).
    """

    __slots__ = ("kind", "end", "limit", "encoding", "owner", "last_tag")

    def __init__(
        self, kind: int, end: int | None, limit: float, encoding: int, owner: int
    ) -> None:
        self.kind = kind
        self.end = end
        self.limit = limit
        self.encoding = encoding
        self.owner = owner
        self.last_tag = -1


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

    :param fp: a seekable binary file positioned just after the file meta.
    :param transfer_syntax_uid: the transfer syntax the data set is encoded in.
    :param max_depth: the deepest sequence nesting allowed (D02).
    :param max_elements: the most headers walked before giving up (D18).
    :param max_inflated_size: for a deflated data set, the largest inflated
        size allowed (D09); ``None`` for no cap.
    :param allow_odd_lengths: accept odd value lengths. PS3.5 7.1.1 makes
        every value length even and lists no exception; this switch exists
        for sites that must accept a known broken modality.
    :returns: the summary of a structurally valid data set.
    :raises MalformedDataset: at the first rule broken.
    """
    source: _FileSource | _InflatingSource
    ts = transfer_syntax_uid.rstrip("\x00 ")
    if ts in _DEFLATED:
        source = _InflatingSource(fp, max_inflated_size)
        encoding = _EXPLICIT_LE
    else:
        source = _FileSource(fp)
        encoding = {_IMPLICIT_VR_LE: _IMPLICIT_LE, _EXPLICIT_VR_BE: _EXPLICIT_BE}.get(
            ts, _EXPLICIT_LE
        )
    deflated = isinstance(source, _InflatingSource)
    top_limit: float = float("inf") if source.end is None else source.end
    return _walk(
        source,
        encoding,
        top_limit,
        deflated,
        max_depth=max_depth,
        max_elements=max_elements,
        allow_odd=allow_odd_lengths,
    )


def _walk(
    source: _FileSource | _InflatingSource,
    encoding: int,
    top_limit: float,
    deflated: bool,
    *,
    max_depth: int,
    max_elements: int,
    allow_odd: bool,
) -> DatasetSummary:
    """
    The walk loop itself (see the theory of operation).

    :param source: the reader.
    :param encoding: the top-level encoding.
    :param top_limit: where the top-level data set must end.
    :param deflated: whether positions are in an inflated stream.
    :param max_depth: the deepest sequence nesting allowed.
    :param max_elements: the most headers walked.
    :param allow_odd: accept odd value lengths.
    :returns: the summary.
    :raises MalformedDataset: at the first rule broken.
    """
    top = _Frame(_DATASET, None, top_limit, encoding, 0)
    stack = [top]
    depth = 0  # sequences (and fragment lists) currently open
    count = 0
    values: dict[int, str] = {}
    pixel_data_offset: int | None = None

    while True:
        frame = stack[-1]
        pos = source.base + source.off
        # A defined-length frame ends exactly at its end (checked on entry).
        if frame.end is not None and pos >= frame.end:
            stack.pop()
            if frame.kind != _DATASET:
                depth -= 1
            continue

        # -- Read one header (PS3.5 7.1.1-7.1.3, 7.5). -------------------------
        if not source.fill(8):
            if len(stack) == 1 and source.off == len(source.buf):
                break  # the top-level data set ends with the input
            if len(stack) == 1:
                raise MalformedDataset(f"data set ends inside an element header at {pos}")
            raise MalformedDataset(
                f"data set ends inside {_tag_text(frame.owner)} at {pos}"
            )
        if pos + 8 > frame.limit:
            raise MalformedDataset(
                f"header at {pos} runs past the end of {_tag_text(frame.owner)}"
            )
        buf, off = source.buf, source.off
        enc = frame.encoding
        little = enc != _EXPLICIT_BE
        vr = b""
        if enc == _IMPLICIT_LE:
            # PS3.5 7.1.3: tag and a 32-bit length, no VR.
            group, element, length = _HHI_LE.unpack_from(buf, off)
            header = 8
        else:
            group, element, vr, length = (_HH2SH_LE if little else _HH2SH_BE).unpack_from(buf, off)
            if group == 0xFFFE:
                # PS3.5 7.5: items and delimiters have no VR in any encoding.
                length = (_I_LE if little else _I_BE).unpack_from(buf, off + 4)[0]
                vr = b""
                header = 8
            elif vr in _SHORT_VRS:
                header = 8
            elif vr in _LONG_VRS:
                # PS3.5 7.1.2: two reserved bytes, then a 32-bit length.
                if not source.fill(12) or pos + 12 > frame.limit:
                    raise MalformedDataset(f"element header at {pos} is truncated")
                buf, off = source.buf, source.off
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
                where = "data set" if frame.limit == top_limit else _tag_text(frame.owner)
                raise MalformedDataset(
                    f"{_tag_text(tag)} length {length} runs past the end of the {where}"
                    f" at {pos}"
                )
        kind = frame.kind

        # -- Inside a sequence: only items and the delimiter (PS3.5 7.5.1). ----
        if kind == _SEQUENCE:
            source.pass_over(header)
            if tag == _ITEM:
                item_end = None if undefined else value_at + length
                item_limit = frame.limit if undefined else value_at + length
                stack.append(_Frame(_DATASET, item_end, item_limit, enc, frame.owner))
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

        # -- Encapsulated pixel data: items of defined length (PS3.5 A.4). -----
        if kind == _FRAGMENTS:
            if tag == _ITEM and not undefined:
                if not source.pass_over(header + length):
                    raise MalformedDataset(f"pixel data fragment at {pos} is truncated")
            elif tag == _SEQUENCE_DELIMITER:
                if length != 0:
                    raise MalformedDataset(f"sequence delimiter length {length} at {pos}")
                source.pass_over(header)
                stack.pop()
                depth -= 1
            else:
                raise MalformedDataset(f"{_tag_text(tag)} among pixel data fragments at {pos}")
            continue

        # -- In a data set (top level or an item). ---------------------------
        if group == 0xFFFE:
            # PS3.5 7.5.2: an item of undefined length ends with (FFFE,E00D).
            if tag == _ITEM_DELIMITER and frame.end is None and len(stack) > 1:
                if length != 0:
                    raise MalformedDataset(f"item delimiter length {length} at {pos}")
                source.pass_over(header)
                stack.pop()
                continue
            raise MalformedDataset(f"unexpected {_tag_text(tag)} in a data set at {pos}")
        # PS3.5 7.1: elements of a data set are in ascending tag order, once each.
        if tag <= frame.last_tag:
            raise MalformedDataset(
                f"{_tag_text(tag)} after {_tag_text(frame.last_tag)}: not ascending, at {pos}"
            )
        frame.last_tag = tag
        if len(stack) == 1 and tag == _PIXEL_DATA and not deflated:
            pixel_data_offset = pos

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
                    f"undefined length on VR {vr.decode('latin-1')} in {_tag_text(tag)} at {pos}"
                )
            depth += 1
            if depth > max_depth:
                raise MalformedDataset(f"sequences nested deeper than {max_depth} at {pos}")
            source.pass_over(header)
            stack.append(_Frame(child_kind, None, frame.limit, child_enc, tag))
            continue

        if vr == b"SQ":
            # An explicit SQ of defined length: walk its items within it.
            depth += 1
            if depth > max_depth:
                raise MalformedDataset(f"sequences nested deeper than {max_depth} at {pos}")
            source.pass_over(header)
            end = value_at + length
            stack.append(_Frame(_SEQUENCE, end, end, enc, tag))
            continue

        if len(stack) == 1 and tag in _READ_TAGS:
            if length > _MAX_READ_VALUE:
                raise MalformedDataset(f"{_tag_text(tag)} value of {length} bytes is too long")
            if not source.fill(header + length):
                raise MalformedDataset(f"{_tag_text(tag)} at {pos} is truncated")
            start = source.off + header
            values[tag] = _decode_value(source.buf[start : start + length])
        if not source.pass_over(header + length):
            raise MalformedDataset(
                f"{_tag_text(tag)} length {length} runs past the end of the data set at {pos}"
            )

    return DatasetSummary(
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
        element_count=count,
        pixel_data_offset=pixel_data_offset,
    )
