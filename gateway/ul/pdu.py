"""The seven upper-layer PDUs of PS3.8 9.3 as frozen dataclasses, with their codec.

``encode(pdu) -> bytes`` produces a whole PDU (6-byte header included).
``decode(pdu_type, body) -> PDU`` parses the *body* of one PDU (the bytes after
the 6-byte header, exactly ``PDU-length`` of them) and raises
:class:`~gateway.ul.errors.PDUDecodeError` with the A-ABORT reason to answer on
any malformed input; it never raises anything else.

AE titles are held as ``str`` with leading and trailing spaces removed (PS3.8
9.3.2: they are not significant) and decoded as Latin-1, so that a title with
odd bytes can still be rejected by policy with an A-ASSOCIATE-RJ instead of an
abort. UIDs are held without their trailing NUL padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Union

from gateway.ul.errors import AbortReason, PDUDecodeError
from gateway.ul.items import (
    USER_INFORMATION,
    Buffer,
    UserInformation,
    decode_uid,
    decode_user_information,
    encode_uid,
    encode_user_information,
    invalid,
    item,
    iter_items,
)

#: PS3.7 Annex A.2.1: the only application context name defined by DICOM.
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class PDUType(IntEnum):
    """PDU type codes (PS3.8 9.3.1)."""

    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


class ContextResult(IntEnum):
    """Presentation context result/reason in an A-ASSOCIATE-AC (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


@dataclass(frozen=True)
class PresentationContextRQ:
    """A presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2, item type 0x20).

    :ivar context_id: an odd number 1..255.
    :ivar abstract_syntax: the abstract syntax UID (sub-item 0x30).
    :ivar transfer_syntaxes: the proposed transfer syntax UIDs (sub-items 0x40), in order.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class PresentationContextAC:
    """A presentation context item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2, item type 0x21).

    :ivar transfer_syntax: the accepted transfer syntax; PS3.8 says it is not
        significant unless ``result`` is acceptance. ``None`` (only allowed
        for a rejected context) encodes as a transfer syntax sub-item of
        length 0, as DCMTK sends; a missing or empty sub-item in a rejected
        context decodes as ``None``.
    """

    context_id: int
    result: int
    transfer_syntax: str | None

    @property
    def accepted(self) -> bool:
        """Whether this context was accepted."""
        return self.result == ContextResult.ACCEPTANCE


@dataclass(frozen=True)
class AAssociateRQ:
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation | None
    application_context: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True)
class AAssociateAC:
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3).

    The AE title fields are echoed from the RQ and are not tested on receipt.
    """

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation | None
    application_context: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True)
class AAssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): result, source and reason as plain ints."""

    result: int
    source: int
    reason: int


@dataclass(frozen=True)
class PDV:
    """One presentation data value item (PS3.8 9.3.5.1 and Annex E.2).

    :ivar control: the message control header byte. Bit 0 set: command
        information; bit 1 set: last fragment. Bits 2-7 are kept but ignored.
    """

    context_id: int
    control: int
    data: bytes

    @property
    def is_command(self) -> bool:
        """Whether this fragment carries command information (Annex E.2 bit 0)."""
        return bool(self.control & 0x01)

    @property
    def is_last(self) -> bool:
        """Whether this is the last fragment of its command or data set (Annex E.2 bit 1)."""
        return bool(self.control & 0x02)


@dataclass(frozen=True)
class PDataTF:
    """P-DATA-TF PDU (PS3.8 9.3.5): one or more PDV items."""

    pdvs: tuple[PDV, ...]


@dataclass(frozen=True)
class AReleaseRQ:
    """A-RELEASE-RQ PDU (PS3.8 9.3.6)."""


@dataclass(frozen=True)
class AReleaseRP:
    """A-RELEASE-RP PDU (PS3.8 9.3.7)."""


@dataclass(frozen=True)
class AAbort:
    """A-ABORT PDU (PS3.8 9.3.8)."""

    source: int
    reason: int


PDU = Union[AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ, AReleaseRP, AAbort]


# ---------------------------------------------------------------------------
# The codec.
#
# Every PDU starts with the same 6-byte header (PS3.8 9.3.1): PDU-type (1),
# a reserved byte (sent 00H, not tested) and PDU-length (4, big endian), the
# number of bytes that follow.  ``encode`` writes the header; ``decode`` takes
# the body only, because the framing layer (``gateway.ul.framing``) has
# already read and validated the header before buffering the body.
#
# A-ASSOCIATE-RQ and -AC share a 68-byte fixed part (PS3.8 Table 9-11 and
# 9-17): protocol-version (2), reserved (2), called AE title (16), calling AE
# title (16) and 32 reserved bytes, followed by variable items.  The four
# short PDUs (RJ, release RQ/RP, abort) have 4-byte bodies exactly.
# P-DATA-TF is a list of PDV items (PS3.8 9.3.5.1), each with a 4-byte
# length, so it has its own fast decoder.
# ---------------------------------------------------------------------------

#: PS3.8 9.3.1: the header every PDU starts with (type, reserved, length).
PDU_HEADER: Final = struct.Struct(">BBI")
#: Size of that header in bytes.
PDU_HEADER_LENGTH: Final = PDU_HEADER.size
#: PS3.8 Tables 9-11/9-17: the fixed part of an A-ASSOCIATE-RQ/AC body.
ASSOCIATE_FIXED_LENGTH: Final = 68
#: PS3.8 Tables 9-21, 9-24, 9-25, 9-26: RJ, RELEASE-RQ/RP and ABORT bodies.
SHORT_PDU_BODY_LENGTH: Final = 4
#: PS3.8 9.3.5.1: a PDV item's length field plus context ID and control byte.
PDV_HEADER_LENGTH: Final = 6
#: PS3.8 9.3.2.2: presentation context IDs are odd 1..255, so at most 128.
MAX_PRESENTATION_CONTEXTS: Final = 128
#: The largest value the 4-byte PDU-length field can hold.
MAX_PDU_LENGTH: Final = 0xFFFFFFFF

#: Variable item types at PDU level (PS3.8 9.3.2 and 9.3.3).
APPLICATION_CONTEXT_ITEM: Final = 0x10
PRESENTATION_CONTEXT_RQ_ITEM: Final = 0x20
PRESENTATION_CONTEXT_AC_ITEM: Final = 0x21
ABSTRACT_SYNTAX_SUB_ITEM: Final = 0x30
TRANSFER_SYNTAX_SUB_ITEM: Final = 0x40

# The fixed part of A-ASSOCIATE-RQ/AC: version, reserved, called, calling, reserved.
_ASSOCIATE_FIXED = struct.Struct(">HH16s16s32s")
# RJ (reserved, result, source, reason) and ABORT (reserved x2, source, reason).
_FOUR_BYTES = struct.Struct(">BBBB")
# A PDV item header: item-length (4), context ID (1), message control header (1).
_PDV_HEADER = struct.Struct(">IBB")
# A whole single-PDV P-DATA-TF header: PDU header followed by one PDV header.
_PDATA_SINGLE_HEADER = struct.Struct(">BBIIBB")
# Offset of the 16-byte AE title fields inside an A-ASSOCIATE body.
_CALLED_AE = slice(4, 20)
_CALLING_AE = slice(20, 36)
# The 4 reserved bytes of A-RELEASE-RQ/RP.
_RELEASE_BODY = b"\x00\x00\x00\x00"


# --- helpers ----------------------------------------------------------------


def encode_ae_title(title: str, what: str) -> bytes:
    """Encode an AE title as 16 bytes, space padded (PS3.8 9.3.2, PS3.5 AE VR).

    :param title: the title; leading spaces are kept, trailing ones are padding.
    :param what: the field's name, for error messages.
    :returns: exactly 16 bytes.
    :raises ValueError: if the title is empty or all spaces, not Latin-1, or
        longer than 16 bytes.
    """
    # PS3.8 9.3.2: leading and trailing spaces are not significant, so a
    # title of only spaces is no title.
    if not title.strip(" "):
        raise ValueError(f"{what}: empty AE title")
    try:
        raw = title.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what}: AE title {title!r} is not Latin-1") from None
    if len(raw) > 16:
        raise ValueError(f"{what}: AE title {title!r} is longer than 16 bytes")
    return raw.ljust(16, b" ")


def decode_ae_title(raw: bytes) -> str:
    """Decode a 16-byte AE title field: Latin-1, spaces stripped (PS3.8 9.3.2).

    Never fails: a title with odd bytes is the acceptor policy's business
    (an A-ASSOCIATE-RJ, HARDENING P10), not a decode error.

    :param raw: the 16 bytes.
    :returns: the title without leading or trailing spaces (may be empty).
    """
    return raw.decode("latin-1").strip(" ")


def _check_byte(value: int, what: str) -> int:
    """Check that ``value`` fits one unsigned byte.

    :param value: the value.
    :param what: the field's name, for error messages.
    :returns: ``value``.
    :raises ValueError: if it does not fit.
    """
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{what}: {value} does not fit one byte")
    return value


def _check_context_id(context_id: int) -> int:
    """Check a presentation context ID before encoding (PS3.8 9.3.2.2: odd, 1..255).

    :param context_id: the ID.
    :returns: ``context_id``.
    :raises ValueError: if it is even, 0 or out of range.
    """
    if not (0 < context_id <= 0xFF and context_id % 2 == 1):
        raise ValueError(f"presentation context ID {context_id} is not an odd number 1..255")
    return context_id


def _header(pdu_type: PDUType, body_length: int) -> bytes:
    """Build the 6-byte PDU header (PS3.8 9.3.1).

    :param pdu_type: the PDU type.
    :param body_length: the number of bytes that follow the header.
    :returns: the header.
    :raises ValueError: if the length does not fit 4 bytes.
    """
    if body_length > MAX_PDU_LENGTH:
        raise ValueError(f"PDU body of {body_length} bytes does not fit the 4-byte PDU length")
    return PDU_HEADER.pack(pdu_type, 0, body_length)


# --- encoding ---------------------------------------------------------------


def _encode_presentation_context_rq(context: PresentationContextRQ) -> bytes:
    """Encode a presentation context item 0x20 (PS3.8 9.3.2.2).

    Content: context ID (1), three reserved bytes, one abstract syntax
    sub-item 0x30 (9.3.2.2.1) and one or more transfer syntax sub-items 0x40
    (9.3.2.2.2).

    :param context: the context.
    :returns: the item, header included.
    :raises ValueError: if the ID is not odd, a UID cannot be encoded, or
        no transfer syntax is proposed.
    """
    if not context.transfer_syntaxes:
        raise ValueError(f"presentation context {context.context_id}: no transfer syntax proposed")
    parts = [
        bytes((_check_context_id(context.context_id), 0, 0, 0)),
        item(ABSTRACT_SYNTAX_SUB_ITEM, encode_uid(context.abstract_syntax, "abstract syntax"), "abstract syntax"),
    ]
    parts.extend(
        item(TRANSFER_SYNTAX_SUB_ITEM, encode_uid(uid, "transfer syntax"), "transfer syntax")
        for uid in context.transfer_syntaxes
    )
    return item(PRESENTATION_CONTEXT_RQ_ITEM, b"".join(parts), "presentation context")


def _encode_presentation_context_ac(context: PresentationContextAC) -> bytes:
    """Encode a presentation context item 0x21 (PS3.8 9.3.3.2).

    Content: context ID (1), reserved (1), result/reason (1), reserved (1),
    one transfer syntax sub-item.  For a rejected context with no transfer
    syntax the sub-item is written with length 0, as DCMTK does (the
    standard says the field is not significant then, 9.3.3.2.1).

    :param context: the context.
    :returns: the item, header included.
    :raises ValueError: if the ID is not odd, or an accepted context has no
        transfer syntax.
    """
    if context.transfer_syntax is None:
        if context.result == ContextResult.ACCEPTANCE:
            raise ValueError(f"presentation context {context.context_id}: accepted without a transfer syntax")
        syntax = b""
    else:
        syntax = encode_uid(context.transfer_syntax, "transfer syntax")
    content = bytes(
        (_check_context_id(context.context_id), 0, _check_byte(context.result, "context result"), 0)
    ) + item(TRANSFER_SYNTAX_SUB_ITEM, syntax, "transfer syntax")
    return item(PRESENTATION_CONTEXT_AC_ITEM, content, "presentation context")


def _check_context_ids(ids: list[int]) -> None:
    """Check the context IDs of one A-ASSOCIATE PDU before encoding (PS3.8 9.3.2.2).

    :param ids: the IDs in order.
    :raises ValueError: if there are more than 128 or any repeats.
    """
    if len(ids) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(f"{len(ids)} presentation contexts; at most 128 fit the odd IDs 1..255")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate presentation context IDs in {ids}")


def _encode_associate(pdu: AAssociateRQ | AAssociateAC) -> bytes:
    """Encode an A-ASSOCIATE-RQ (PS3.8 9.3.2) or -AC (9.3.3).

    Items are written in the standard's order: application context,
    presentation contexts, user information.

    :param pdu: the PDU.
    :returns: the whole PDU.
    :raises ValueError: if any field cannot be encoded.
    """
    is_rq = isinstance(pdu, AAssociateRQ)
    # Refuse what the decoder would refuse (HARDENING P12) before building anything.
    _check_context_ids([context.context_id for context in pdu.presentation_contexts])
    # Fixed part (PS3.8 Table 9-11 / 9-17), then the application context
    # item (9.3.2.1), which every RQ and AC carries exactly once.
    parts = [
        _ASSOCIATE_FIXED.pack(
            _check_protocol_version(pdu.protocol_version),
            0,
            encode_ae_title(pdu.called_ae_title, "called AE title"),
            encode_ae_title(pdu.calling_ae_title, "calling AE title"),
            bytes(32),
        ),
        item(
            APPLICATION_CONTEXT_ITEM,
            encode_uid(pdu.application_context, "application context name"),
            "application context",
        ),
    ]
    # Presentation contexts: 0x20 items in an RQ, 0x21 items in an AC.
    for context in pdu.presentation_contexts:
        if is_rq:
            assert isinstance(context, PresentationContextRQ)
            parts.append(_encode_presentation_context_rq(context))
        else:
            assert isinstance(context, PresentationContextAC)
            parts.append(_encode_presentation_context_ac(context))
    # The user information item comes last (PS3.8 9.3.2.3); None omits it.
    if pdu.user_information is not None:
        parts.append(encode_user_information(pdu.user_information))
    # One join: every part is copied once into the final body.
    body = b"".join(parts)
    return _header(PDUType.A_ASSOCIATE_RQ if is_rq else PDUType.A_ASSOCIATE_AC, len(body)) + body


def _check_protocol_version(version: int) -> int:
    """Check that the protocol version fits its 2-byte field (PS3.8 9.3.2).

    :param version: the value (bit 0 set for version 1).
    :returns: ``version``.
    :raises ValueError: if it does not fit 16 bits.
    """
    if not 0 <= version <= 0xFFFF:
        raise ValueError(f"protocol version {version} does not fit 16 bits")
    return version


def pdata_pdu(context_id: int, control: int, data: Buffer) -> bytes:
    """Build a P-DATA-TF PDU holding a single PDV, as bytes (PS3.8 9.3.5).

    This is the sender's fast path for dataset fragments: one header pack and
    one concatenation, so the payload is copied once.

    :param context_id: the presentation context ID (1 byte).
    :param control: the message control header (PS3.8 E.2: bit 0 command,
        bit 1 last fragment).
    :param data: the fragment.
    :returns: the whole PDU.
    :raises ValueError: if a field does not fit.
    """
    length = len(data)
    # The PDV item length counts the context ID and control byte (+2);
    # the PDU length counts the PDV header (4 + 2) and the data; it must fit 4 bytes.
    if length + PDV_HEADER_LENGTH > MAX_PDU_LENGTH:
        raise ValueError(f"PDV of {length} bytes does not fit one P-DATA-TF PDU")
    # One struct call writes both headers: PDU (type, reserved, length) and
    # PDV (length, context ID, control).
    header = _PDATA_SINGLE_HEADER.pack(
        PDUType.P_DATA_TF,
        0,
        length + PDV_HEADER_LENGTH,
        length + 2,
        _check_byte(context_id, "PDV context ID"),
        _check_byte(control, "PDV message control header"),
    )
    return header + data


def _encode_pdata(pdu: PDataTF) -> bytes:
    """Encode a P-DATA-TF with one or more PDV items (PS3.8 9.3.5).

    :param pdu: the PDU.
    :returns: the whole PDU.
    :raises ValueError: if it has no PDV, or a field does not fit.
    """
    # PS3.8 9.3.5: one or more PDV items (the decoder refuses zero, HARDENING P21).
    if not pdu.pdvs:
        raise ValueError("a P-DATA-TF needs at least one PDV item")
    # The common case (one fragment per PDU) takes the single-header fast path.
    if len(pdu.pdvs) == 1:
        pdv = pdu.pdvs[0]
        return pdata_pdu(pdv.context_id, pdv.control, pdv.data)
    # Slot 0 is a placeholder for the PDU header, known once the total is.
    parts: list[bytes] = [b""]
    total = 0
    for pdv in pdu.pdvs:
        parts.append(
            _PDV_HEADER.pack(
                len(pdv.data) + 2,
                _check_byte(pdv.context_id, "PDV context ID"),
                _check_byte(pdv.control, "PDV message control header"),
            )
        )
        parts.append(pdv.data)
        # Each PDV adds its 4-byte length, context ID and control byte.
        total += PDV_HEADER_LENGTH + len(pdv.data)
    parts[0] = _header(PDUType.P_DATA_TF, total)
    return b"".join(parts)


def encode(pdu: PDU) -> bytes:
    """Encode one PDU, header included (PS3.8 9.3).

    :param pdu: any of the seven PDU dataclasses.
    :returns: the bytes to send.
    :raises ValueError: if a field cannot be encoded (e.g. an AE title over
        16 bytes, an even context ID, an accepted context without transfer
        syntax, a P-DATA-TF without PDV).  Anything ``encode`` accepts,
        ``decode`` gives back unchanged.
    """
    # Dispatch on the dataclass; P-DATA-TF first since it is by far the most frequent.
    match pdu:
        case PDataTF():
            return _encode_pdata(pdu)
        case AAssociateRQ() | AAssociateAC():
            return _encode_associate(pdu)
        case AAssociateRJ(result=result, source=source, reason=reason):
            # PS3.8 Table 9-21: reserved, result, source, reason/diag.
            body = _FOUR_BYTES.pack(
                0, _check_byte(result, "RJ result"), _check_byte(source, "RJ source"), _check_byte(reason, "RJ reason")
            )
            return _header(PDUType.A_ASSOCIATE_RJ, len(body)) + body
        case AReleaseRQ():
            # PS3.8 Table 9-24: four reserved bytes.
            return _header(PDUType.A_RELEASE_RQ, SHORT_PDU_BODY_LENGTH) + _RELEASE_BODY
        case AReleaseRP():
            # PS3.8 Table 9-25: four reserved bytes.
            return _header(PDUType.A_RELEASE_RP, SHORT_PDU_BODY_LENGTH) + _RELEASE_BODY
        case AAbort(source=source, reason=reason):
            # PS3.8 Table 9-26: two reserved bytes, source, reason/diag.
            body = _FOUR_BYTES.pack(0, 0, _check_byte(source, "abort source"), _check_byte(reason, "abort reason"))
            return _header(PDUType.A_ABORT, len(body)) + body
    raise TypeError(f"not a PDU: {pdu!r}")


# --- decoding ---------------------------------------------------------------


def decode_pdata(body: Buffer) -> PDataTF:
    """Decode a P-DATA-TF body (PS3.8 9.3.5), the fast path for bulk data.

    Each PDV item is item-length (4), presentation-context-ID (1), message
    control header (1) and item-length - 2 bytes of fragment (PS3.8 9.3.5.1,
    Annex E.2).  The body is walked through a ``memoryview`` and each
    fragment copied out exactly once.

    :param body: the PDU body.
    :returns: the PDU.
    :raises PDUDecodeError: (reason 6) if there is no PDV item (HARDENING
        P21), a PDV length is below 2 or overruns the body, or fewer than 6
        bytes trail the last PDV (P22).
    """
    # A view makes the per-PDV slices free; only bytes() below copies.
    view = body if isinstance(body, memoryview) else memoryview(body)
    end = len(view)
    # PS3.8 9.3.5: one or more PDV items (HARDENING P21, dicom-rs #828).
    if end == 0:
        raise invalid("P-DATA-TF with no PDV item")
    pdvs: list[PDV] = []
    offset = 0
    while offset < end:
        # A PDV header needs 6 bytes: length, context ID and control byte.
        if end - offset < PDV_HEADER_LENGTH:
            raise invalid(f"P-DATA-TF: {end - offset} trailing byte(s) cannot hold a PDV item")
        length, context_id, control = _PDV_HEADER.unpack_from(view, offset)
        # The length counts the context ID and control byte, so it is >= 2.
        if length < 2:
            raise invalid(f"P-DATA-TF: PDV item length {length} is below the minimum of 2")
        data_end = offset + 4 + length
        # The PDV must stay inside the PDU (0xFFFFFFFF lands here, DCMTK PR #87).
        if data_end > end:
            raise invalid(f"P-DATA-TF: PDV item length {length} overruns the PDU by {data_end - end} byte(s)")
        pdvs.append(PDV(context_id=context_id, control=control, data=bytes(view[offset + PDV_HEADER_LENGTH : data_end])))
        offset = data_end
    return PDataTF(pdvs=tuple(pdvs))


def _decode_presentation_context_rq(view: memoryview, start: int, end: int) -> PresentationContextRQ:
    """Decode the content of a presentation context item 0x20 (PS3.8 9.3.2.2).

    :param view: the PDU body.
    :param start: first content byte.
    :param end: one past the last content byte.
    :returns: the context.
    :raises PDUDecodeError: if the item is shorter than its 4 fixed bytes, the
        abstract syntax is missing, empty or repeated, or no non-empty transfer
        syntax follows.  Unknown sub-items are ignored (PS3.8 9.3.1).
    """
    if end - start < 4:
        raise invalid(f"presentation context item of length {end - start}; at least 4 needed")
    context_id = view[start]
    abstract: str | None = None
    syntaxes: list[str] = []
    for sub_type, s, e in iter_items(view, start + 4, end, f"presentation context {context_id}"):
        if sub_type == ABSTRACT_SYNTAX_SUB_ITEM:
            # PS3.8 9.3.2.2: exactly one abstract syntax sub-item.
            if abstract is not None:
                raise invalid(f"presentation context {context_id}: two abstract syntax sub-items")
            abstract = decode_uid(view, s, e, f"presentation context {context_id} abstract syntax")
        elif sub_type == TRANSFER_SYNTAX_SUB_ITEM:
            syntaxes.append(decode_uid(view, s, e, f"presentation context {context_id} transfer syntax"))
    if abstract is None:
        raise invalid(f"presentation context {context_id}: no abstract syntax sub-item")
    # PS3.8 9.3.2.2: one or more transfer syntax sub-items.
    if not syntaxes:
        raise invalid(f"presentation context {context_id}: no transfer syntax sub-item")
    return PresentationContextRQ(context_id=context_id, abstract_syntax=abstract, transfer_syntaxes=tuple(syntaxes))


def _decode_presentation_context_ac(view: memoryview, start: int, end: int) -> PresentationContextAC:
    """Decode the content of a presentation context item 0x21 (PS3.8 9.3.3.2).

    :param view: the PDU body.
    :param start: first content byte.
    :param end: one past the last content byte.
    :returns: the context; ``transfer_syntax`` is ``None`` when a rejected
        context carries no (or an empty) transfer syntax sub-item.
    :raises PDUDecodeError: if the item is shorter than 4 bytes, has two
        transfer syntax sub-items, or is accepted without a transfer syntax.
    """
    if end - start < 4:
        raise invalid(f"presentation context item of length {end - start}; at least 4 needed")
    context_id = view[start]
    result = view[start + 2]
    syntax: str | None = None
    seen = False
    for sub_type, s, e in iter_items(view, start + 4, end, f"presentation context {context_id}"):
        if sub_type == TRANSFER_SYNTAX_SUB_ITEM:
            # PS3.8 9.3.3.2: a single transfer syntax sub-item.
            if seen:
                raise invalid(f"presentation context {context_id}: two transfer syntax sub-items")
            seen = True
            syntax = decode_uid(view, s, e, "transfer syntax", required=False) or None
    # PS3.8 9.3.3.2.1: the transfer syntax is significant only on acceptance.
    if result == ContextResult.ACCEPTANCE and syntax is None:
        raise invalid(f"presentation context {context_id}: accepted without a transfer syntax")
    return PresentationContextAC(context_id=context_id, result=result, transfer_syntax=syntax)


def _decode_associate(pdu_type: PDUType, body: Buffer) -> AAssociateRQ | AAssociateAC:
    """Decode an A-ASSOCIATE-RQ (PS3.8 9.3.2) or -AC (9.3.3) body.

    Items at PDU level of a type not expected in this PDU are ignored
    (PS3.8 9.3.1).  The application context item is mandatory and single,
    the user information item optional and single; presentation context
    IDs must be odd, distinct and at most 128 (HARDENING P12).

    :param pdu_type: RQ or AC.
    :param body: the PDU body.
    :returns: the PDU.
    :raises PDUDecodeError: (reason 6) on any structural fault.
    """
    view = body if isinstance(body, memoryview) else memoryview(body)
    # HARDENING P06: the 68-byte fixed part must be there.
    if len(view) < ASSOCIATE_FIXED_LENGTH:
        raise invalid(f"{pdu_type.name} body of {len(view)} bytes; the fixed part alone is 68")
    # Reserved fields are read but never tested (PS3.8 Table 9-11).
    version, _reserved, called, calling, _reserved32 = _ASSOCIATE_FIXED.unpack_from(view, 0)
    is_rq = pdu_type == PDUType.A_ASSOCIATE_RQ
    # RQ carries 0x20 contexts, AC carries 0x21; the other kind is ignored.
    context_type = PRESENTATION_CONTEXT_RQ_ITEM if is_rq else PRESENTATION_CONTEXT_AC_ITEM
    application_context: str | None = None
    contexts: list[PresentationContextRQ | PresentationContextAC] = []
    ids: set[int] = set()
    user_information: UserInformation | None = None
    for item_type, s, e in iter_items(view, ASSOCIATE_FIXED_LENGTH, len(view), pdu_type.name):
        if item_type == APPLICATION_CONTEXT_ITEM:
            # PS3.8 9.3.2: exactly one application context item.
            if application_context is not None:
                raise invalid(f"{pdu_type.name}: two application context items")
            application_context = decode_uid(view, s, e, "application context name")
        elif item_type == context_type:
            context = (
                _decode_presentation_context_rq(view, s, e) if is_rq else _decode_presentation_context_ac(view, s, e)
            )
            # HARDENING P12 (pinned: abort): IDs are odd 1..255 and distinct,
            # hence at most 128 of them (PS3.8 9.3.2.2).
            if context.context_id % 2 == 0:
                raise invalid(f"presentation context ID {context.context_id} is even or zero")
            if context.context_id in ids:
                raise invalid(f"presentation context ID {context.context_id} appears twice")
            ids.add(context.context_id)
            contexts.append(context)
        elif item_type == USER_INFORMATION:
            # PS3.8 9.3.2: a single user information item.
            if user_information is not None:
                raise invalid(f"{pdu_type.name}: two user information items")
            user_information = decode_user_information(view, s, e)
        # Anything else is an unknown item at PDU level: skipped (PS3.8 9.3.1).
    # PS3.8 9.3.2: the application context item is mandatory.  Its *value*
    # is the acceptor policy's business (RJ(1,1,2), HARDENING P09).
    if application_context is None:
        raise invalid(f"{pdu_type.name}: no application context item")
    # Titles are decoded last, leniently: the policy judges them (P10).
    if is_rq:
        # The filter only narrows the type: an RQ only ever collected 0x20 items.
        return AAssociateRQ(
            called_ae_title=decode_ae_title(called),
            calling_ae_title=decode_ae_title(calling),
            presentation_contexts=tuple(c for c in contexts if isinstance(c, PresentationContextRQ)),
            user_information=user_information,
            application_context=application_context,
            protocol_version=version,
        )
    return AAssociateAC(
        called_ae_title=decode_ae_title(called),
        calling_ae_title=decode_ae_title(calling),
        presentation_contexts=tuple(c for c in contexts if isinstance(c, PresentationContextAC)),
        user_information=user_information,
        application_context=application_context,
        protocol_version=version,
    )


def _four_bytes(pdu_type: PDUType, body: Buffer) -> tuple[int, int, int, int]:
    """Unpack the 4-byte body of RJ, RELEASE-RQ/RP or ABORT.

    :param pdu_type: the PDU type, for error messages.
    :param body: the PDU body.
    :returns: the four bytes.
    :raises PDUDecodeError: if the body is not exactly 4 bytes (HARDENING P28).
    """
    if len(body) != SHORT_PDU_BODY_LENGTH:
        raise invalid(f"{pdu_type.name} body of {len(body)} bytes; it must be exactly 4")
    return _FOUR_BYTES.unpack_from(body, 0)


def decode(pdu_type: int, body: Buffer) -> PDU:
    """Decode the body of one PDU.

    :param pdu_type: the first byte of the PDU header.
    :param body: exactly the PDU-length bytes that follow the 6-byte header.
    :returns: the PDU.
    :raises PDUDecodeError: on any malformed input, with the A-ABORT reason:
        UNRECOGNIZED_PDU for a type other than 1..7 (PS3.8 9.3.1),
        INVALID_PDU_PARAMETER_VALUE for every structural fault.  Nothing
        else is ever raised.
    """
    if pdu_type == PDUType.P_DATA_TF:
        # The hot path first.
        return decode_pdata(body)
    if pdu_type == PDUType.A_ASSOCIATE_RQ or pdu_type == PDUType.A_ASSOCIATE_AC:
        return _decode_associate(PDUType(pdu_type), body)
    if pdu_type == PDUType.A_ASSOCIATE_RJ:
        # PS3.8 Table 9-21: reserved, result, source, reason/diag.
        _, result, source, reason = _four_bytes(PDUType.A_ASSOCIATE_RJ, body)
        return AAssociateRJ(result=result, source=source, reason=reason)
    if pdu_type == PDUType.A_RELEASE_RQ:
        # PS3.8 Table 9-24: the reserved bytes are not tested.
        _four_bytes(PDUType.A_RELEASE_RQ, body)
        return AReleaseRQ()
    if pdu_type == PDUType.A_RELEASE_RP:
        # PS3.8 Table 9-25: the reserved bytes are not tested.
        _four_bytes(PDUType.A_RELEASE_RP, body)
        return AReleaseRP()
    if pdu_type == PDUType.A_ABORT:
        # PS3.8 Table 9-26: reserved, reserved, source, reason/diag.
        _, _, source, reason = _four_bytes(PDUType.A_ABORT, body)
        return AAbort(source=source, reason=reason)
    raise PDUDecodeError(AbortReason.UNRECOGNIZED_PDU, f"unrecognized PDU type 0x{pdu_type & 0xFF:02X}")
