"""The Storage Commitment data sets, encoded and decoded by hand (PS3.4 J.3.2, J.3.3).

Theory of operation
===================

Storage Commitment (PS3.4 Annex J, Push Model) carries two small data sets:
the N-ACTION-RQ's Action Information (PS3.4 Table J.3-1: a Transaction UID
and the Referenced SOP Sequence of the instances asked about) and the
N-EVENT-REPORT-RQ's Event Information (PS3.4 Table J.3-2: the Transaction
UID, the committed instances in the Referenced SOP Sequence and the failed
ones, each with its Failure Reason, in the Failed SOP Sequence). Both travel
in the transfer syntax of the presentation context, which for this SOP class
is Implicit or Explicit VR Little Endian (the only two the gateway proposes
or accepts for it); anything else is refused with an error naming it.

The decoder is written for a hostile peer, like
:mod:`gateway.dimse.commands`, and without pydicom (this package is
sans-IO and must stay cheap to audit):

* it walks the whole data set once, element by element (PS3.5 7.1), and
  every length is checked against what is left *before* anything is sliced
  (HARDENING R4); a sequence or item of defined length must be filled
  exactly by what it contains (PS3.5 7.5.1);
* sequences and items of undefined length end at their delimitation items,
  whose length must be 0 (PS3.5 7.5.2); a delimiter where none is open is an
  error;
* tags ascend strictly in every data set and item (PS3.5 7.1): a duplicate
  Transaction UID could otherwise be read two ways by two readers;
* unknown elements are skipped, including unknown sequences (undefined
  length, or VR SQ in Explicit VR), which are walked so that their
  delimiters are found; (0008,1111) Referenced Performed Procedure Step
  Sequence is one of them. A known sequence sent as UN (a proxy that did not
  know it) is read in Implicit VR, as PS3.5 6.2.2 prescribes;
* everything is bounded: nesting depth (:data:`MAX_DEPTH`), items in all
  sequences together (:data:`MAX_ITEMS`), and instances per sequence
  (:data:`MAX_REFERENCES`), so that work and memory are linear in the input
  and capped whatever the peer sends.

Errors are one exception, :class:`CommitmentDataSetError`, carrying the
DIMSE status the SCP answers with (the N-ACTION-RSP, or the
N-EVENT-REPORT-RSP to an archive) and a comment that names tags and
offsets, never values.

Which status for which fault. PS3.7 10.1.4.1.10 lists the failures an
N-ACTION-RSP may carry (and 10.1.1.1.8 those of an N-EVENT-REPORT-RSP):
processing failure 0x0110, no such SOP instance 0x0112, invalid argument
value 0x0115, mistyped argument 0x0212, resource limitation 0x0213, among
others. "Missing attribute" 0x0120 and "missing attribute value" 0x0121 are
general codes of PS3.7 C.5 that the standard lists for N-CREATE and N-SET
(PS3.7 10.1.5, 10.1.3), not for N-ACTION or N-EVENT-REPORT. So:

* a data set that cannot be walked (truncation, bad delimiters, nesting,
  order): 0x0110 processing failure;
* a missing or empty Transaction UID, Referenced SOP Sequence (or, in a
  report, neither sequence), item UID, or an invalid UID: 0x0115 invalid
  argument value (PS3.4 J.3.2.1.1 makes all of them required, Type 1);
* a value of the wrong size for its VR (a Failure Reason that is not a US):
  0x0212 mistyped argument;
* more instances than :data:`MAX_REFERENCES`, or items past
  :data:`MAX_ITEMS`: 0x0213 resource limitation.

Those three choices are :data:`STATUS_MISSING`, :data:`STATUS_INVALID` and
friends below, in one place.

Which UIDs are "invalid". HARDENING decision 3 accepts non-conformant UIDs
at receive time (leading zeros, even letters), so a modality may well ask
about an instance whose UID is not PS3.5 9.1 conformant, and must get an
answer about it. The decoder therefore refuses only what could never be
echoed back in a report: an empty value, more than 64 bytes (PS3.5 Table
6.2-1), more than one value (a backslash), or characters outside printable
ASCII. Conformance beyond that is policy, not codec.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

from gateway.commitment.model import (
    ActionRequest,
    CommitmentReport,
    FailedReference,
    FailureReason,
    Reference,
)
from gateway.dimse.status import Status

__all__ = [
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "MAX_REFERENCES",
    "MAX_ITEMS",
    "MAX_DEPTH",
    "CommitmentDataSetError",
    "decode_action_request",
    "encode_action_request",
    "decode_event_report",
    "encode_event_report",
]

#: PS3.5 A.1: the default transfer syntax.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
#: PS3.5 A.2.
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: The transfer syntaxes of a Storage Commitment context we can read and write.
SUPPORTED_TRANSFER_SYNTAXES: frozenset[str] = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})

#: The most instances one request or report may name. Real transactions name
#: one study, and the largest studies are tens of thousands of instances
#: (thin-slice 4D CT, tomosynthesis as single frames): 100,000 is well above
#: them, yet bounds what one N-ACTION costs the journal (one row per
#: instance) and the report (about 130 bytes per instance, ~13 MB).
MAX_REFERENCES = 100_000
#: Items in all sequences of one data set together, known or not: the work
#: bound for a peer that nests unknown sequences (two full sequences and room).
MAX_ITEMS = 2 * MAX_REFERENCES + 1_000
#: Sequence nesting depth: ours are one deep; (0008,1111) items may hold a
#: sequence or two. Bounds recursion whatever the peer nests.
MAX_DEPTH = 8

#: Statuses per kind of fault (module docstring; PS3.7 10.1.4.1.10, 10.1.1.1.8, C.5).
STATUS_MALFORMED = Status.PROCESSING_FAILURE
STATUS_MISSING = Status.INVALID_ARGUMENT_VALUE
STATUS_INVALID = Status.INVALID_ARGUMENT_VALUE
STATUS_MISTYPED = Status.MISTYPED_ARGUMENT
STATUS_TOO_LARGE = Status.RESOURCE_LIMITATION


class CommitmentDataSetError(Exception):
    """A Storage Commitment data set that cannot be used, with the status to answer.

    :param status: the DIMSE status for the response (module docstring).
    :param comment: a description for the Error Comment (0000,0902) and the
        logs; it names tags and offsets, never values.
    :param tag: the offending element's tag (for (0000,0901)), when one is to blame.
    """

    def __init__(self, status: int, comment: str, tag: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.tag = tag


# ---------------------------------------------------------------------------
# Tags (PS3.6) and encoding constants (PS3.5)
# ---------------------------------------------------------------------------

RETRIEVE_AE_TITLE = 0x00080054  # AE
REFERENCED_PPS_SEQUENCE = 0x00081111  # SQ, skipped
REFERENCED_SOP_CLASS_UID = 0x00081150  # UI
REFERENCED_SOP_INSTANCE_UID = 0x00081155  # UI
FAILURE_REASON = 0x00081197  # US
FAILED_SOP_SEQUENCE = 0x00081198  # SQ
TRANSACTION_UID = 0x00081195  # UI
REFERENCED_SOP_SEQUENCE = 0x00081199  # SQ
STORAGE_MEDIA_FILE_SET_ID = 0x00880130  # SH
STORAGE_MEDIA_FILE_SET_UID = 0x00880140  # UI

#: PS3.5 7.5: item, item delimitation, sequence delimitation (no VR, even in Explicit VR).
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
#: PS3.5 7.1.1: undefined length.
_UNDEFINED = 0xFFFFFFFF

#: Sequences whose items we read; any other sequence is walked and dropped.
_KNOWN_SEQUENCES = frozenset({REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE})
#: Elements kept at the top level and in items.
_KEPT_TOP = frozenset(
    {
        RETRIEVE_AE_TITLE,
        TRANSACTION_UID,
        FAILED_SOP_SEQUENCE,
        REFERENCED_SOP_SEQUENCE,
        STORAGE_MEDIA_FILE_SET_ID,
        STORAGE_MEDIA_FILE_SET_UID,
    }
)
_KEPT_ITEM = frozenset({REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON})

#: PS3.5 Table 7.1-1: Explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
#: PS3.5 Table 7.1-2: every other VR the standard defines (2-byte length).
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip

#: Tag (group, element) as two little-endian uint16 (PS3.5 7.1).
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

#: PS3.5 Table 6.2-1 maximum lengths.
_MAX_UI = 64
_MAX_AE = 16
_MAX_SH = 16


def _tag_text(tag: int) -> str:
    """Format a tag as ``(gggg,eeee)`` for comments."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# ---------------------------------------------------------------------------
# Decoding: one bounded walk of the data set
# ---------------------------------------------------------------------------

#: A decoded level (data set or item): kept tags -> raw value or list of items.
_Value = Union[bytes, "list[_Level]"]
_Level = dict[int, _Value]


@dataclass
class _Walk:
    """The state of one decode: the buffer and the item budget (MAX_ITEMS)."""

    data: memoryview
    items_left: int
    seen_items: dict[int, int] = field(default_factory=dict)

    def malformed(self, offset: int, what: str) -> CommitmentDataSetError:
        """Build the error for a data set that cannot be walked (0x0110)."""
        return CommitmentDataSetError(STATUS_MALFORMED, f"malformed data set at offset {offset}: {what}")


def _read_header(walk: _Walk, offset: int, end: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """Read one element header at ``offset`` (PS3.5 7.1.2 Implicit, 7.1.1 Explicit).

    Item and delimitation tags have no VR in either syntax (PS3.5 7.5).

    :returns: tag, VR (``None`` in Implicit VR or for item tags), value
        length, offset of the value.
    :raises CommitmentDataSetError: when the header runs past ``end``.
    """
    if end - offset < 8:
        raise walk.malformed(offset, f"{end - offset} bytes left, an element header needs 8")
    group, element = _TAG.unpack_from(walk.data, offset)
    tag = (group << 16) | element
    if group == 0xFFFE or not explicit:
        (length,) = _U32.unpack_from(walk.data, offset + 4)
        return tag, None, length, offset + 8
    vr = bytes(walk.data[offset + 4 : offset + 6])
    if vr in _LONG_VRS:
        if end - offset < 12:
            raise walk.malformed(offset, f"{end - offset} bytes left, a {vr.decode()} header needs 12")
        (length,) = _U32.unpack_from(walk.data, offset + 8)
        return tag, vr, length, offset + 12
    if vr in _SHORT_VRS:
        (length,) = _U16.unpack_from(walk.data, offset + 6)
        return tag, vr, length, offset + 8
    # PS3.5 6.2: not a VR at all; guessing its length form would misread the rest.
    raise walk.malformed(offset, f"unknown VR {vr!r} on {_tag_text(tag)}")


def _walk_level(
    walk: _Walk, offset: int, end: int, explicit: bool, depth: int, in_item: bool, kept: frozenset[int]
) -> tuple[_Level, int]:
    """Walk the elements of a data set or an item until ``end`` or its delimiter.

    :param offset: where the first element starts.
    :param end: the end of the enclosing defined-length container (or the buffer).
    :param in_item: whether an item delimiter may end this level (an item of
        undefined length, PS3.5 7.5.2).
    :param kept: the tags whose values are kept; others are walked and dropped.
    :returns: the kept elements, and the offset after the level (after its
        item delimiter, if it ended on one).
    :raises CommitmentDataSetError: on any violation (module docstring).
    """
    level: _Level = {}
    previous = -1
    while offset < end:
        tag, vr, length, value_at = _read_header(walk, offset, end, explicit)
        if tag == _ITEM_DELIMITER:
            if not in_item:
                raise walk.malformed(offset, "item delimiter outside an item of undefined length")
            if length != 0:
                raise walk.malformed(offset, f"item delimiter with length {length}, PS3.5 7.5.2 requires 0")
            return level, value_at
        if tag in (_ITEM, _SEQUENCE_DELIMITER):
            raise walk.malformed(offset, f"{_tag_text(tag)} outside a sequence")
        # PS3.5 7.1: ascending tags; equal is a duplicate two readers could read two ways.
        if tag <= previous:
            word = "duplicate" if tag == previous else "out of ascending order"
            raise walk.malformed(offset, f"element {_tag_text(tag)} {word}")
        previous = tag
        # A sequence: VR SQ, UN of undefined length (PS3.5 6.2.2), or in Implicit
        # VR either one of ours or anything of undefined length.
        is_sequence = (
            vr == b"SQ"
            or (vr == b"UN" and (length == _UNDEFINED or tag in _KNOWN_SEQUENCES))
            or (vr is None and (length == _UNDEFINED or tag in _KNOWN_SEQUENCES))
        )
        if is_sequence:
            # Items of a sequence sent as UN are in Implicit VR LE (PS3.5 6.2.2).
            inner_explicit = explicit and vr != b"UN"
            items, offset = _walk_sequence(walk, tag, value_at, end, length, inner_explicit, depth + 1)
            if tag in kept:
                level[tag] = items
            continue
        if length == _UNDEFINED:
            raise walk.malformed(offset, f"undefined length on {_tag_text(tag)} of VR {vr!r}")
        # The value must fit before it is sliced (HARDENING R4).
        if length > end - value_at:
            raise walk.malformed(offset, f"{_tag_text(tag)} length {length} exceeds the {end - value_at} bytes left")
        if tag in kept:
            level[tag] = bytes(walk.data[value_at : value_at + length])
        offset = value_at + length
    # Reaching the end of the container is the end of a defined-length level;
    # an item of undefined length must have met its delimiter first.
    if in_item:
        raise walk.malformed(offset, "item of undefined length without its delimiter")
    return level, offset


def _walk_sequence(
    walk: _Walk, tag: int, offset: int, end: int, length: int, explicit: bool, depth: int
) -> tuple[list[_Level], int]:
    """Walk a sequence's items (PS3.5 7.5), of defined or undefined length.

    :param tag: the sequence's tag (items of known sequences are kept).
    :param offset: where its first item starts.
    :param end: the end of the enclosing container.
    :param length: the sequence's length, or undefined.
    :returns: its items (empty for unknown sequences) and the offset after it.
    """
    if depth > MAX_DEPTH:
        raise walk.malformed(offset, f"sequences nested deeper than {MAX_DEPTH}")
    if length != _UNDEFINED:
        if length > end - offset:
            raise walk.malformed(offset, f"sequence {_tag_text(tag)} length {length} exceeds the {end - offset} bytes left")
        end = offset + length
    known = tag in _KNOWN_SEQUENCES and depth == 1
    items: list[_Level] = []
    while True:
        if length != _UNDEFINED and offset == end:
            return items, offset
        item_tag, _, item_length, value_at = _read_header(walk, offset, end, False)
        if item_tag == _SEQUENCE_DELIMITER:
            if length != _UNDEFINED:
                raise walk.malformed(offset, f"sequence delimiter in {_tag_text(tag)} of defined length")
            if item_length != 0:
                raise walk.malformed(offset, f"sequence delimiter with length {item_length}, PS3.5 7.5.2 requires 0")
            return items, value_at
        if item_tag != _ITEM:
            raise walk.malformed(offset, f"{_tag_text(item_tag)} where an item of {_tag_text(tag)} was expected")
        walk.items_left -= 1
        if walk.items_left < 0:
            raise CommitmentDataSetError(STATUS_TOO_LARGE, f"more than {MAX_ITEMS} items in the data set", tag)
        if known:
            walk.seen_items[tag] = walk.seen_items.get(tag, 0) + 1
            if walk.seen_items[tag] > MAX_REFERENCES:
                raise CommitmentDataSetError(
                    STATUS_TOO_LARGE, f"{_tag_text(tag)} names more than {MAX_REFERENCES} instances", tag
                )
        if item_length == _UNDEFINED:
            item, offset = _walk_level(walk, value_at, end, explicit, depth, True, _KEPT_ITEM if known else frozenset())
        else:
            if item_length > end - value_at:
                raise walk.malformed(offset, f"item length {item_length} exceeds the {end - value_at} bytes left")
            item, offset = _walk_level(
                walk, value_at, value_at + item_length, explicit, depth, False, _KEPT_ITEM if known else frozenset()
            )
        if known:
            items.append(item)


def _walk(data: bytes | memoryview, transfer_syntax: str) -> _Level:
    """Walk a whole data set in ``transfer_syntax`` and return its kept top-level elements.

    :raises CommitmentDataSetError: for an unsupported transfer syntax
        (0x0110, naming it) or any violation of the module docstring.
    """
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise CommitmentDataSetError(
            STATUS_MALFORMED,
            f"transfer syntax {transfer_syntax} is not supported for Storage Commitment "
            "(Implicit or Explicit VR Little Endian only)",
        )
    view = memoryview(data)
    walk = _Walk(view, MAX_ITEMS)
    level, _ = _walk_level(walk, 0, len(view), transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN, 0, False, _KEPT_TOP)
    return level


def _text(raw: bytes) -> str:
    """A string value without its padding (NUL for UI, space for others, PS3.5 6.2)."""
    return raw.decode("latin-1").strip(" \x00")


def _uid(level: _Level, tag: int, where: str) -> str:
    """Read a required (Type 1) UI element and check it can be echoed back (module docstring).

    :raises CommitmentDataSetError: 0x0115 when missing, empty or invalid.
    """
    raw = level.get(tag)
    if raw is None:
        raise CommitmentDataSetError(STATUS_MISSING, f"{_tag_text(tag)} missing from {where}", tag)
    if not isinstance(raw, bytes):
        raise CommitmentDataSetError(STATUS_MISTYPED, f"{_tag_text(tag)} in {where} is a sequence, not a UID", tag)
    value = _text(raw)
    if not value:
        raise CommitmentDataSetError(STATUS_MISSING, f"{_tag_text(tag)} empty in {where}", tag)
    if len(value) > _MAX_UI or "\\" in value or not all("!" <= ch <= "~" for ch in value):
        raise CommitmentDataSetError(STATUS_INVALID, f"{_tag_text(tag)} in {where} is not a UID", tag)
    return value


def _optional_text(level: _Level, tag: int) -> str:
    """An optional string element, ``""`` when absent or a sequence."""
    raw = level.get(tag)
    return _text(raw) if isinstance(raw, bytes) else ""


def _items(level: _Level, tag: int) -> list[_Level] | None:
    """The items of a known sequence, or ``None`` when absent.

    :raises CommitmentDataSetError: 0x0212 when the element is not a sequence.
    """
    value = level.get(tag)
    if value is None:
        return None
    if isinstance(value, bytes):
        raise CommitmentDataSetError(STATUS_MISTYPED, f"{_tag_text(tag)} is not a sequence", tag)
    return value


def _reference(item: _Level, sequence: int, index: int) -> Reference:
    """Read one item's Referenced SOP Class and Instance UIDs (PS3.4 Table J.3-1, Type 1)."""
    where = f"item {index + 1} of {_tag_text(sequence)}"
    return Reference(
        _uid(item, REFERENCED_SOP_CLASS_UID, where),
        _uid(item, REFERENCED_SOP_INSTANCE_UID, where),
    )


def decode_action_request(data: bytes | memoryview, transfer_syntax: str) -> ActionRequest:
    """Decode an N-ACTION-RQ's Action Information (PS3.4 Table J.3-1).

    :param data: the whole data set (all its fragments joined).
    :param transfer_syntax: the presentation context's transfer syntax UID.
    :returns: the request, references in the order sent (repeats kept).
    :raises CommitmentDataSetError: with the status to answer (module
        docstring): 0x0115 when the Transaction UID or the Referenced SOP
        Sequence (or an item's UID) is missing, empty or invalid.
    """
    top = _walk(data, transfer_syntax)
    transaction_uid = _uid(top, TRANSACTION_UID, "the data set")
    items = _items(top, REFERENCED_SOP_SEQUENCE)
    if items is None:
        raise CommitmentDataSetError(
            STATUS_MISSING, f"{_tag_text(REFERENCED_SOP_SEQUENCE)} missing from the data set", REFERENCED_SOP_SEQUENCE
        )
    # PS3.4 Table J.3-1: one or more items.
    if not items:
        raise CommitmentDataSetError(
            STATUS_MISSING, f"{_tag_text(REFERENCED_SOP_SEQUENCE)} has no items", REFERENCED_SOP_SEQUENCE
        )
    references = tuple(_reference(item, REFERENCED_SOP_SEQUENCE, i) for i, item in enumerate(items))
    return ActionRequest(
        transaction_uid=transaction_uid,
        references=references,
        storage_media_file_set_id=_optional_text(top, STORAGE_MEDIA_FILE_SET_ID),
        storage_media_file_set_uid=_optional_text(top, STORAGE_MEDIA_FILE_SET_UID),
    )


def decode_event_report(data: bytes | memoryview, transfer_syntax: str) -> CommitmentReport:
    """Decode an N-EVENT-REPORT-RQ's Event Information (PS3.4 Table J.3-2).

    A Failed SOP Sequence item without a Failure Reason still names a failed
    instance: it decodes with 0x0110 (processing failure), the safe reading.
    Whether an instance appears in both sequences, or the data set matches
    the command's Event Type ID, is for the caller to judge.

    :param data: the whole data set.
    :param transfer_syntax: the presentation context's transfer syntax UID.
    :returns: the report as sent.
    :raises CommitmentDataSetError: with the status for the
        N-EVENT-REPORT-RSP: 0x0115 when the Transaction UID is missing or
        neither sequence has an item, 0x0212 for a Failure Reason that is not
        a US.
    """
    top = _walk(data, transfer_syntax)
    transaction_uid = _uid(top, TRANSACTION_UID, "the data set")
    committed_items = _items(top, REFERENCED_SOP_SEQUENCE) or []
    failed_items = _items(top, FAILED_SOP_SEQUENCE) or []
    if not committed_items and not failed_items:
        raise CommitmentDataSetError(
            STATUS_MISSING,
            f"neither {_tag_text(REFERENCED_SOP_SEQUENCE)} nor {_tag_text(FAILED_SOP_SEQUENCE)} has an item",
            REFERENCED_SOP_SEQUENCE,
        )
    committed = tuple(_reference(item, REFERENCED_SOP_SEQUENCE, i) for i, item in enumerate(committed_items))
    failed: list[FailedReference] = []
    for i, item in enumerate(failed_items):
        reference = _reference(item, FAILED_SOP_SEQUENCE, i)
        raw = item.get(FAILURE_REASON)
        if raw is None:
            reason = int(FailureReason.PROCESSING_FAILURE)
        elif isinstance(raw, bytes) and len(raw) == 2:
            (reason,) = _U16.unpack(raw)
        else:
            raise CommitmentDataSetError(
                STATUS_MISTYPED,
                f"{_tag_text(FAILURE_REASON)} in item {i + 1} of {_tag_text(FAILED_SOP_SEQUENCE)} is not a US",
                FAILURE_REASON,
            )
        failed.append(FailedReference(reference, reason))
    return CommitmentReport(
        transaction_uid=transaction_uid,
        committed=committed,
        failed=tuple(failed),
        retrieve_ae_title=_optional_text(top, RETRIEVE_AE_TITLE),
    )


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _pad(raw: bytes, pad: bytes) -> bytes:
    """Pad a value to even length (PS3.5 7.1.1)."""
    return raw + pad if len(raw) % 2 else raw


def _enc_ui(value: str) -> bytes:
    """A UI value, NUL-padded (PS3.5 6.2).

    :raises ValueError: empty, not ASCII, or longer than 64 bytes.
    """
    raw = value.encode("ascii")
    if not raw or len(raw) > _MAX_UI:
        raise ValueError(f"UID {value!r} is empty or longer than {_MAX_UI} bytes")
    return _pad(raw, b"\x00")


def _enc_string(value: str, limit: int, what: str) -> bytes:
    """An AE or SH value, space-padded (PS3.5 6.2).

    :raises ValueError: not ASCII, a backslash, or longer than ``limit``.
    """
    raw = value.encode("ascii")
    if len(raw) > limit or b"\\" in raw:
        raise ValueError(f"{what} {value!r} is longer than {limit} bytes or holds a backslash")
    return _pad(raw, b" ")


class _Encoder:
    """Element encoding in one transfer syntax (PS3.5 7.1.1 Explicit, 7.1.2 Implicit)."""

    def __init__(self, transfer_syntax: str) -> None:
        """:raises ValueError: for a transfer syntax other than Implicit or Explicit VR LE."""
        if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
            raise ValueError(
                f"transfer syntax {transfer_syntax} is not supported for Storage Commitment "
                "(Implicit or Explicit VR Little Endian only)"
            )
        self.explicit = transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN

    def element(self, tag: int, vr: bytes, value: bytes) -> bytes:
        """One element with a defined length."""
        head = _TAG.pack(tag >> 16, tag & 0xFFFF)
        if not self.explicit:
            return head + _U32.pack(len(value)) + value
        if vr in _LONG_VRS:
            return head + vr + b"\x00\x00" + _U32.pack(len(value)) + value
        return head + vr + _U16.pack(len(value)) + value

    def sequence(self, tag: int, items: list[bytes]) -> bytes:
        """A sequence of defined length whose items have defined lengths (PS3.5 7.5.1)."""
        body = b"".join(_TAG.pack(0xFFFE, 0xE000) + _U32.pack(len(item)) + item for item in items)
        return self.element(tag, b"SQ", body)

    def reference(self, reference: Reference, reason: int | None = None) -> bytes:
        """One Referenced/Failed SOP Sequence item's content, tags ascending."""
        parts = [
            self.element(REFERENCED_SOP_CLASS_UID, b"UI", _enc_ui(reference.sop_class_uid)),
            self.element(REFERENCED_SOP_INSTANCE_UID, b"UI", _enc_ui(reference.sop_instance_uid)),
        ]
        if reason is not None:
            if not 0 <= reason <= 0xFFFF:
                raise ValueError(f"Failure Reason {reason!r} does not fit in a US")
            parts.append(self.element(FAILURE_REASON, b"US", _U16.pack(reason)))
        return b"".join(parts)


def encode_action_request(request: ActionRequest, transfer_syntax: str) -> bytes:
    """Encode an N-ACTION-RQ's Action Information (PS3.4 Table J.3-1).

    :param request: the request; it must name at least one instance.
    :param transfer_syntax: the accepted context's transfer syntax.
    :returns: the data set, tags ascending, defined lengths throughout.
    :raises ValueError: for an unsupported transfer syntax, no references,
        more than :data:`MAX_REFERENCES`, or a value that cannot be encoded.
    """
    enc = _Encoder(transfer_syntax)
    if not request.references:
        raise ValueError("a Storage Commitment request names at least one instance (PS3.4 Table J.3-1)")
    if len(request.references) > MAX_REFERENCES:
        raise ValueError(f"more than {MAX_REFERENCES} instances in one request")
    parts = [
        enc.element(TRANSACTION_UID, b"UI", _enc_ui(request.transaction_uid)),
        enc.sequence(REFERENCED_SOP_SEQUENCE, [enc.reference(r) for r in request.references]),
    ]
    if request.storage_media_file_set_id:
        parts.append(
            enc.element(
                STORAGE_MEDIA_FILE_SET_ID, b"SH", _enc_string(request.storage_media_file_set_id, _MAX_SH, "File-set ID")
            )
        )
    if request.storage_media_file_set_uid:
        parts.append(enc.element(STORAGE_MEDIA_FILE_SET_UID, b"UI", _enc_ui(request.storage_media_file_set_uid)))
    return b"".join(parts)


def encode_event_report(report: CommitmentReport, transfer_syntax: str) -> bytes:
    """Encode an N-EVENT-REPORT-RQ's Event Information (PS3.4 Table J.3-2).

    The Referenced SOP Sequence is present when some instance is committed,
    the Failed SOP Sequence when some failed (Event Type 1 has no failures,
    Event Type 2 has some: :attr:`CommitmentReport.event_type`).

    :param report: the report; it must name at least one instance.
    :param transfer_syntax: the accepted context's transfer syntax.
    :returns: the data set, tags ascending, defined lengths throughout.
    :raises ValueError: for an unsupported transfer syntax, an empty report,
        more than :data:`MAX_REFERENCES` in a sequence, or a value that
        cannot be encoded.
    """
    enc = _Encoder(transfer_syntax)
    if not report.committed and not report.failed:
        raise ValueError("a Storage Commitment report names at least one instance (PS3.4 Table J.3-2)")
    if len(report.committed) > MAX_REFERENCES or len(report.failed) > MAX_REFERENCES:
        raise ValueError(f"more than {MAX_REFERENCES} instances in one sequence")
    parts: list[bytes] = []
    if report.retrieve_ae_title:
        parts.append(enc.element(RETRIEVE_AE_TITLE, b"AE", _enc_string(report.retrieve_ae_title, _MAX_AE, "AE title")))
    parts.append(enc.element(TRANSACTION_UID, b"UI", _enc_ui(report.transaction_uid)))
    if report.failed:
        parts.append(enc.sequence(FAILED_SOP_SEQUENCE, [enc.reference(f.reference, f.reason) for f in report.failed]))
    if report.committed:
        parts.append(enc.sequence(REFERENCED_SOP_SEQUENCE, [enc.reference(r) for r in report.committed]))
    return b"".join(parts)
