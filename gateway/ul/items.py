"""User-information sub-items of A-ASSOCIATE-RQ/AC (PS3.8 Annex D, PS3.7 Annex D.3.3).

The dataclasses below are the decoded form; the codec lives beside them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.ul.errors import AbortReason, PDUDecodeError


@dataclass(frozen=True)
class SCPSCURoleSelection:
    """SCP/SCU role selection sub-item 0x54 (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class SOPClassExtendedNegotiation:
    """SOP class extended negotiation sub-item 0x56 (PS3.7 D.3.3.5)."""

    sop_class_uid: str
    application_information: bytes


@dataclass(frozen=True)
class SOPClassCommonExtendedNegotiation:
    """SOP class common extended negotiation sub-item 0x57 (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserIdentityRQ:
    """User identity negotiation sub-item 0x58 in an RQ (PS3.7 D.3.3.7.1).

    :ivar identity_type: 1 username, 2 username+passcode, 3 Kerberos,
        4 SAML, 5 JWT.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""


@dataclass(frozen=True)
class UserIdentityAC:
    """User identity negotiation sub-item 0x59 in an AC (PS3.7 D.3.3.7.2)."""

    server_response: bytes


@dataclass(frozen=True)
class UnknownItem:
    """A sub-item whose type we do not know; kept so it can be logged, then ignored (PS3.8 9.3)."""

    item_type: int
    data: bytes


@dataclass(frozen=True)
class UserInformation:
    """User information item 0x50 (PS3.8 9.3.2.3 and Annex D).

    :ivar max_length: maximum length received (sub-item 0x51, PS3.8 D.1);
        ``None`` when the sub-item is absent, 0 means no limit.
    :ivar async_ops: (max operations invoked, max operations performed) from
        sub-item 0x53 (PS3.7 D.3.3.3), or ``None``.
    """

    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops: tuple[int, int] | None = None
    role_selections: tuple[SCPSCURoleSelection, ...] = ()
    extended_negotiations: tuple[SOPClassExtendedNegotiation, ...] = ()
    common_extended_negotiations: tuple[SOPClassCommonExtendedNegotiation, ...] = ()
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: UserIdentityAC | None = None
    unknown_items: tuple[UnknownItem, ...] = ()


# ---------------------------------------------------------------------------
# The codec.
#
# Every item and sub-item of PS3.8 9.3.2-9.3.3 and Annex D shares one header:
# item-type (1 byte), a reserved byte (sent as 00H, never tested on receipt),
# item-length (2 bytes, big endian, PS3.8 9.3.1) and then item-length bytes of
# content.  The helpers below walk such items inside a ``memoryview`` by
# offset, so decoding never slices the buffer except to copy out a final value.
#
# Two rules hold throughout:
#
# * decoding raises :class:`PDUDecodeError` and nothing else: every length is
#   checked against the end of its parent before it is used, so ``struct`` and
#   indexing can never run off the end;
# * encoding raises :class:`ValueError` for anything the decoder would reject,
#   so ``decode(encode(x)) == x`` holds for everything ``encode`` accepts.
# ---------------------------------------------------------------------------

#: Anything the decoder accepts as input: bytes, or a view of them.
Buffer = bytes | bytearray | memoryview

#: Item type codes of the user-information sub-items (PS3.8 Annex D, PS3.7 D.3.3).
MAXIMUM_LENGTH = 0x51
IMPLEMENTATION_CLASS_UID = 0x52
ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
SCP_SCU_ROLE_SELECTION = 0x54
IMPLEMENTATION_VERSION_NAME = 0x55
SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
USER_IDENTITY_RQ = 0x58
USER_IDENTITY_AC = 0x59
#: The user information item itself (PS3.8 9.3.2.3).
USER_INFORMATION = 0x50

#: Sub-item types this codec understands; anything else becomes an UnknownItem.
KNOWN_USER_INFORMATION_TYPES = frozenset(
    {
        MAXIMUM_LENGTH,
        IMPLEMENTATION_CLASS_UID,
        ASYNCHRONOUS_OPERATIONS_WINDOW,
        SCP_SCU_ROLE_SELECTION,
        IMPLEMENTATION_VERSION_NAME,
        SOP_CLASS_EXTENDED_NEGOTIATION,
        SOP_CLASS_COMMON_EXTENDED_NEGOTIATION,
        USER_IDENTITY_RQ,
        USER_IDENTITY_AC,
    }
)

#: PS3.7 D.3.3.2: the implementation version name is 1 to 16 characters.
MAX_IMPLEMENTATION_VERSION_NAME = 16
#: The largest value a 2-byte item-length field can hold (PS3.8 9.3.1).
MAX_ITEM_LENGTH = 0xFFFF

# Item header: type, reserved, length (PS3.8 9.3.1: big endian throughout).
_ITEM_HEADER = struct.Struct(">BBH")
# Unsigned 16- and 32-bit big-endian integers.
_UINT16 = struct.Struct(">H")
_UINT32 = struct.Struct(">I")
# Asynchronous operations window content: invoked, performed (PS3.7 D.3.3.3).
_ASYNC_OPS = struct.Struct(">HH")


def invalid(message: str) -> PDUDecodeError:
    """Build the error for a structurally invalid field (A-ABORT reason 6).

    :param message: what was wrong, for the log.
    :returns: a :class:`PDUDecodeError` with reason INVALID_PDU_PARAMETER_VALUE.
    """
    return PDUDecodeError(AbortReason.INVALID_PDU_PARAMETER_VALUE, message)


def iter_items(buf: memoryview, start: int, end: int, where: str) -> Iterator[tuple[int, int, int]]:
    """Walk the items packed in ``buf[start:end]`` (PS3.8 9.3.1 item layout).

    Each item is type (1), reserved (1, not tested), length (2), content.

    :param buf: the whole PDU body.
    :param start: offset of the first item header.
    :param end: offset one past the last byte of the parent's content.
    :param where: the parent's name, for error messages.
    :returns: an iterator of ``(item_type, content_start, content_end)``.
    :raises PDUDecodeError: if an item overruns the parent, or bytes too few
        for an item header trail the last item (PS3.8 9.3.1; HARDENING P06/P07).
    """
    offset = start
    while offset < end:
        # Fewer than 4 bytes left cannot be an item: trailing junk.
        if end - offset < _ITEM_HEADER.size:
            raise invalid(f"{where}: {end - offset} trailing byte(s) after the last item")
        item_type, _reserved, length = _ITEM_HEADER.unpack_from(buf, offset)
        content = offset + _ITEM_HEADER.size
        # The declared length must stay inside the parent (HARDENING P07).
        if content + length > end:
            raise invalid(
                f"{where}: item 0x{item_type:02X} of length {length} overruns its parent "
                f"by {content + length - end} byte(s)"
            )
        yield item_type, content, content + length
        offset = content + length


def item(item_type: int, content: bytes, what: str, second_byte: int = 0) -> bytes:
    """Frame ``content`` as one item (PS3.8 9.3.1 layout).

    :param item_type: the item-type byte.
    :param content: the item's content.
    :param what: the item's name, for error messages.
    :param second_byte: the byte after the type: reserved (00H) for every item
        except 0x57, where it is the sub-item version (PS3.7 D.3.3.6).
    :returns: header plus content.
    :raises ValueError: if the content does not fit a 2-byte length.
    """
    if len(content) > MAX_ITEM_LENGTH:
        raise ValueError(f"{what}: {len(content)} bytes do not fit a 2-byte item length")
    return _ITEM_HEADER.pack(item_type, second_byte, len(content)) + content


def decode_uid(buf: memoryview, start: int, end: int, what: str, required: bool = True) -> str:
    """Decode a UID field, dropping trailing NUL or space padding.

    PS3.8 9.3.2.2.1 says UIDs in upper-layer items are not padded, but some
    implementations pad to even length anyway (PS3.5 9.1 style), so the
    decoder tolerates it.  Latin-1 never fails, so odd bytes reach the
    negotiation policy as characters instead of aborting here.

    :param buf: the PDU body.
    :param start: first byte of the UID.
    :param end: one past its last byte.
    :param what: the field's name, for error messages.
    :param required: whether an empty UID is a protocol error.
    :returns: the UID as a string.
    :raises PDUDecodeError: if ``required`` and the field is empty.
    """
    uid = bytes(buf[start:end]).decode("latin-1").rstrip("\x00 ")
    # An empty UID where one is mandatory is a zero-length item with required
    # content (HARDENING P07, dicom-rs #760).
    if required and not uid:
        raise invalid(f"{what}: empty UID")
    return uid


def encode_uid(uid: str, what: str, required: bool = True) -> bytes:
    """Encode a UID field, without padding (PS3.8 9.3.2.2.1).

    :param uid: the UID.
    :param what: the field's name, for error messages.
    :param required: whether an empty UID is refused.
    :returns: the UID's bytes.
    :raises ValueError: if the UID is empty (when required), is not Latin-1,
        or ends in NUL or space (which the decoder would strip).
    """
    if required and not uid:
        raise ValueError(f"{what}: empty UID")
    # Trailing padding would not survive a round trip (decode strips it).
    if uid != uid.rstrip("\x00 "):
        raise ValueError(f"{what}: UID {uid!r} ends in padding; UL UIDs are not padded")
    try:
        return uid.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what}: UID {uid!r} is not Latin-1") from None


def _uid_with_length(uid: str, what: str) -> bytes:
    """Encode a UID preceded by its own 2-byte length (PS3.7 D.3.3.4-D.3.3.6).

    :param uid: the UID.
    :param what: the field's name, for error messages.
    :returns: length and UID bytes.
    :raises ValueError: as :func:`encode_uid`, or if longer than 65535 bytes.
    """
    raw = encode_uid(uid, what)
    if len(raw) > MAX_ITEM_LENGTH:
        raise ValueError(f"{what}: UID too long")
    return _UINT16.pack(len(raw)) + raw


def _read_uid_with_length(buf: memoryview, offset: int, end: int, what: str) -> tuple[str, int]:
    """Read a 2-byte length followed by that many UID bytes, inside ``[offset, end)``.

    :param buf: the PDU body.
    :param offset: where the length field starts.
    :param end: the end of the enclosing sub-item.
    :param what: the field's name, for error messages.
    :returns: the UID and the offset just past it.
    :raises PDUDecodeError: if the length field or the UID overruns the sub-item,
        or the UID is empty.
    """
    # The 2-byte length itself must fit.
    if end - offset < _UINT16.size:
        raise invalid(f"{what}: truncated before its length field")
    (length,) = _UINT16.unpack_from(buf, offset)
    offset += _UINT16.size
    # The UID must fit inside the sub-item (HARDENING P07).
    if offset + length > end:
        raise invalid(f"{what}: length {length} overruns its sub-item")
    return decode_uid(buf, offset, offset + length, what), offset + length


def _bool_byte(value: int) -> bool:
    """Interpret a 0/1 flag byte leniently: any non-zero value is true.

    PS3.7 D.3.3.4 and D.3.3.7 define only 0 and 1; other values are not
    worth an abort.

    :param value: the byte.
    :returns: whether the flag is set.
    """
    return value != 0


# --- decoding ---------------------------------------------------------------


def decode_role_selection(buf: memoryview, start: int, end: int) -> SCPSCURoleSelection:
    """Decode the content of an SCP/SCU role selection sub-item 0x54 (PS3.7 D.3.3.4).

    Layout: UID-length (2), SOP-class-uid, SCU-role (1), SCP-role (1).

    :param buf: the PDU body.
    :param start: first content byte.
    :param end: one past the last content byte.
    :returns: the decoded sub-item.
    :raises PDUDecodeError: if the layout does not fill the sub-item exactly.
    """
    uid, offset = _read_uid_with_length(buf, start, end, "role selection SOP class UID")
    # Exactly the two role bytes must follow the UID.
    if end - offset != 2:
        raise invalid(f"role selection: expected 2 role bytes after the UID, found {end - offset}")
    return SCPSCURoleSelection(
        sop_class_uid=uid,
        scu_role=_bool_byte(buf[offset]),
        scp_role=_bool_byte(buf[offset + 1]),
    )


def decode_extended_negotiation(buf: memoryview, start: int, end: int) -> SOPClassExtendedNegotiation:
    """Decode the content of a SOP class extended negotiation sub-item 0x56 (PS3.7 D.3.3.5).

    Layout: SOP-class-uid-length (2), SOP-class-uid, service-class-application-
    information (the rest of the sub-item, opaque to the upper layer).

    :param buf: the PDU body.
    :param start: first content byte.
    :param end: one past the last content byte.
    :returns: the decoded sub-item.
    :raises PDUDecodeError: if the UID overruns the sub-item or is empty.
    """
    uid, offset = _read_uid_with_length(buf, start, end, "extended negotiation SOP class UID")
    # Whatever follows the UID is the service-class-specific information.
    return SOPClassExtendedNegotiation(sop_class_uid=uid, application_information=bytes(buf[offset:end]))


def decode_common_extended_negotiation(
    buf: memoryview, start: int, end: int
) -> SOPClassCommonExtendedNegotiation:
    """Decode a SOP class common extended negotiation sub-item 0x57 (PS3.7 D.3.3.6).

    Layout (PS3.7 Table D.3-12): SOP-class-uid-length (2), SOP-class-uid,
    service-class-uid-length (2), service-class-uid, related-general-sop-
    class-identification-length (2), then that many bytes of related general
    SOP class identifications.  Each of those (Table D.3-13) is a UID length
    (2) followed by the UID, with no item type or reserved byte; this is
    also what pynetdicom and dcm4che read and write.  The byte after the
    sub-item type is the sub-item version (00H), not tested on receipt.

    :param buf: the PDU body.
    :param start: first content byte.
    :param end: one past the last content byte.
    :returns: the decoded sub-item.
    :raises PDUDecodeError: if any length overruns, a UID is empty, or the
        related-class list does not fill the rest of the sub-item exactly.
    """
    sop_class, offset = _read_uid_with_length(buf, start, end, "common extended negotiation SOP class UID")
    service_class, offset = _read_uid_with_length(buf, offset, end, "common extended negotiation service class UID")
    # The related-classes length field is mandatory, even when it is 0.
    if end - offset < _UINT16.size:
        raise invalid("common extended negotiation: missing related general SOP class length")
    (related_length,) = _UINT16.unpack_from(buf, offset)
    offset += _UINT16.size
    # The related list must fill the rest of the sub-item exactly.
    if offset + related_length != end:
        raise invalid(
            f"common extended negotiation: related general SOP class length {related_length} "
            f"does not match the {end - offset} byte(s) left"
        )
    related: list[str] = []
    while offset < end:
        # Each entry is a length-prefixed UID (PS3.7 Table D.3-13).
        uid, offset = _read_uid_with_length(buf, offset, end, "related general SOP class UID")
        related.append(uid)
    return SOPClassCommonExtendedNegotiation(
        sop_class_uid=sop_class,
        service_class_uid=service_class,
        related_general_sop_classes=tuple(related),
    )


def decode_user_identity_rq(buf: memoryview, start: int, end: int) -> UserIdentityRQ:
    """Decode a user identity negotiation sub-item 0x58 (PS3.7 D.3.3.7.1).

    Layout: user-identity-type (1), positive-response-requested (1),
    primary-field-length (2), primary-field, secondary-field-length (2),
    secondary-field.  The secondary length is mandatory in the standard; a
    sub-item that ends right after the primary field is read leniently as an
    empty secondary field.

    :param buf: the PDU body.
    :param start: first content byte.
    :param end: one past the last content byte.
    :returns: the decoded sub-item.
    :raises PDUDecodeError: if a field overruns the sub-item or bytes trail it.
    """
    # Type, flag and primary length are always present.
    if end - start < 4:
        raise invalid("user identity RQ: shorter than its 4 fixed bytes")
    identity_type = buf[start]
    positive = _bool_byte(buf[start + 1])
    (primary_length,) = _UINT16.unpack_from(buf, start + 2)
    offset = start + 4
    # The primary field must fit the sub-item.
    if offset + primary_length > end:
        raise invalid(f"user identity RQ: primary field length {primary_length} overruns the sub-item")
    primary = bytes(buf[offset : offset + primary_length])
    offset += primary_length
    secondary = b""
    if offset < end:
        # A secondary length is present: it and its field must fill the rest.
        if end - offset < _UINT16.size:
            raise invalid("user identity RQ: truncated secondary field length")
        (secondary_length,) = _UINT16.unpack_from(buf, offset)
        offset += _UINT16.size
        if offset + secondary_length != end:
            raise invalid(
                f"user identity RQ: secondary field length {secondary_length} does not match "
                f"the {end - offset} byte(s) left"
            )
        secondary = bytes(buf[offset:end])
    return UserIdentityRQ(
        identity_type=identity_type,
        positive_response_requested=positive,
        primary_field=primary,
        secondary_field=secondary,
    )


def decode_user_identity_ac(buf: memoryview, start: int, end: int) -> UserIdentityAC:
    """Decode a user identity negotiation sub-item 0x59 (PS3.7 D.3.3.7.2).

    Layout: server-response-length (2), server-response.

    :param buf: the PDU body.
    :param start: first content byte.
    :param end: one past the last content byte.
    :returns: the decoded sub-item.
    :raises PDUDecodeError: if the response length does not fill the sub-item.
    """
    if end - start < _UINT16.size:
        raise invalid("user identity AC: shorter than its length field")
    (length,) = _UINT16.unpack_from(buf, start)
    # The response must fill the sub-item exactly.
    if start + _UINT16.size + length != end:
        raise invalid(f"user identity AC: server response length {length} does not match the sub-item")
    return UserIdentityAC(server_response=bytes(buf[start + _UINT16.size : end]))


def decode_user_information(buf: Buffer, start: int = 0, end: int | None = None) -> UserInformation:
    """Decode the content of a user information item 0x50 (PS3.8 9.3.2.3, Annex D).

    Sub-items may come in any order.  Singletons (0x51, 0x52, 0x53, 0x55,
    0x58, 0x59) may appear at most once.  Sub-items of unknown type are kept as
    :class:`UnknownItem` and otherwise ignored (PS3.8 D.2 note 2: acceptors
    "are required to ignore such unrecognized user information Sub-Items";
    HARDENING P14).

    :param buf: the PDU body (or just the item content).
    :param start: first content byte of the user information item.
    :param end: one past its last content byte; defaults to the end of ``buf``.
    :returns: the decoded user information.
    :raises PDUDecodeError: on any structural fault (reason 6).
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    stop = len(view) if end is None else end
    # Accumulators for each field of UserInformation.
    max_length: int | None = None
    class_uid: str | None = None
    version_name: str | None = None
    async_ops: tuple[int, int] | None = None
    roles: list[SCPSCURoleSelection] = []
    extended: list[SOPClassExtendedNegotiation] = []
    common: list[SOPClassCommonExtendedNegotiation] = []
    identity_rq: UserIdentityRQ | None = None
    identity_ac: UserIdentityAC | None = None
    unknown: list[UnknownItem] = []
    seen: set[int] = set()
    for item_type, s, e in iter_items(view, start, stop, "user information"):
        # Singletons may appear once only (PS3.8 D.1, PS3.7 D.3.3.2/3/7).
        if item_type in _SINGLETONS:
            if item_type in seen:
                raise invalid(f"user information: sub-item 0x{item_type:02X} appears twice")
            seen.add(item_type)
        if item_type == MAXIMUM_LENGTH:
            # PS3.8 D.1: maximum-length-received is exactly 4 bytes.
            if e - s != _UINT32.size:
                raise invalid(f"maximum length sub-item: length {e - s}, expected 4")
            (max_length,) = _UINT32.unpack_from(view, s)
        elif item_type == IMPLEMENTATION_CLASS_UID:
            # PS3.7 D.3.3.2: a UID; tolerated empty since it is informational.
            class_uid = decode_uid(view, s, e, "implementation class UID", required=False)
        elif item_type == ASYNCHRONOUS_OPERATIONS_WINDOW:
            # PS3.7 D.3.3.3: invoked (2) and performed (2).
            if e - s != _ASYNC_OPS.size:
                raise invalid(f"asynchronous operations window sub-item: length {e - s}, expected 4")
            async_ops = _ASYNC_OPS.unpack_from(view, s)
        elif item_type == SCP_SCU_ROLE_SELECTION:
            roles.append(decode_role_selection(view, s, e))
        elif item_type == IMPLEMENTATION_VERSION_NAME:
            # PS3.7 D.3.3.2: 1-16 characters; kept verbatim (never fails).
            version_name = bytes(view[s:e]).decode("latin-1")
        elif item_type == SOP_CLASS_EXTENDED_NEGOTIATION:
            extended.append(decode_extended_negotiation(view, s, e))
        elif item_type == SOP_CLASS_COMMON_EXTENDED_NEGOTIATION:
            common.append(decode_common_extended_negotiation(view, s, e))
        elif item_type == USER_IDENTITY_RQ:
            identity_rq = decode_user_identity_rq(view, s, e)
        elif item_type == USER_IDENTITY_AC:
            identity_ac = decode_user_identity_ac(view, s, e)
        else:
            # PS3.8 D.2: unknown sub-items are ignored; keep them for the log.
            unknown.append(UnknownItem(item_type=item_type, data=bytes(view[s:e])))
    return UserInformation(
        max_length=max_length,
        implementation_class_uid=class_uid,
        implementation_version_name=version_name,
        async_ops=async_ops,
        role_selections=tuple(roles),
        extended_negotiations=tuple(extended),
        common_extended_negotiations=tuple(common),
        user_identity_rq=identity_rq,
        user_identity_ac=identity_ac,
        unknown_items=tuple(unknown),
    )


#: Sub-items that may appear at most once in one user information item.
_SINGLETONS = frozenset(
    {
        MAXIMUM_LENGTH,
        IMPLEMENTATION_CLASS_UID,
        ASYNCHRONOUS_OPERATIONS_WINDOW,
        IMPLEMENTATION_VERSION_NAME,
        USER_IDENTITY_RQ,
        USER_IDENTITY_AC,
    }
)


# --- encoding ---------------------------------------------------------------


def _check_range(value: int, bits: int, what: str) -> int:
    """Check that ``value`` fits an unsigned field of ``bits`` bits.

    :param value: the value.
    :param bits: the field width.
    :param what: the field's name, for error messages.
    :returns: ``value``.
    :raises ValueError: if it does not fit.
    """
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{what}: {value} does not fit {bits} bits")
    return value


def encode_role_selection(role: SCPSCURoleSelection) -> bytes:
    """Encode an SCP/SCU role selection sub-item 0x54 (PS3.7 D.3.3.4).

    :param role: the sub-item.
    :returns: the whole sub-item, header included.
    :raises ValueError: if the UID cannot be encoded.
    """
    content = _uid_with_length(role.sop_class_uid, "role selection SOP class UID") + bytes(
        (int(role.scu_role), int(role.scp_role))
    )
    return item(SCP_SCU_ROLE_SELECTION, content, "role selection")


def encode_extended_negotiation(negotiation: SOPClassExtendedNegotiation) -> bytes:
    """Encode a SOP class extended negotiation sub-item 0x56 (PS3.7 D.3.3.5).

    :param negotiation: the sub-item.
    :returns: the whole sub-item, header included.
    :raises ValueError: if the UID cannot be encoded or the item is too long.
    """
    content = (
        _uid_with_length(negotiation.sop_class_uid, "extended negotiation SOP class UID")
        + negotiation.application_information
    )
    return item(SOP_CLASS_EXTENDED_NEGOTIATION, content, "extended negotiation")


def encode_common_extended_negotiation(negotiation: SOPClassCommonExtendedNegotiation) -> bytes:
    """Encode a SOP class common extended negotiation sub-item 0x57 (PS3.7 D.3.3.6).

    The byte after the item type is the sub-item version, 00H; related
    general SOP classes are written as length-prefixed UIDs (Table D.3-13).

    :param negotiation: the sub-item.
    :returns: the whole sub-item, header included.
    :raises ValueError: if a UID cannot be encoded or the item is too long.
    """
    # PS3.7 Table D.3-13: each related class is a length-prefixed UID.
    related = b"".join(
        _uid_with_length(uid, "related general SOP class UID") for uid in negotiation.related_general_sop_classes
    )
    if len(related) > MAX_ITEM_LENGTH:
        raise ValueError("common extended negotiation: related general SOP class list too long")
    content = (
        _uid_with_length(negotiation.sop_class_uid, "common extended negotiation SOP class UID")
        + _uid_with_length(negotiation.service_class_uid, "common extended negotiation service class UID")
        + _UINT16.pack(len(related))
        + related
    )
    return item(SOP_CLASS_COMMON_EXTENDED_NEGOTIATION, content, "common extended negotiation", second_byte=0)


def encode_user_identity_rq(identity: UserIdentityRQ) -> bytes:
    """Encode a user identity negotiation sub-item 0x58 (PS3.7 D.3.3.7.1).

    The secondary-field length is always written (0 when there is none).

    :param identity: the sub-item.
    :returns: the whole sub-item, header included.
    :raises ValueError: if a field is out of range or too long.
    """
    _check_range(identity.identity_type, 8, "user identity type")
    if len(identity.primary_field) > MAX_ITEM_LENGTH or len(identity.secondary_field) > MAX_ITEM_LENGTH:
        raise ValueError("user identity RQ: field too long")
    content = (
        bytes((identity.identity_type, int(identity.positive_response_requested)))
        + _UINT16.pack(len(identity.primary_field))
        + identity.primary_field
        + _UINT16.pack(len(identity.secondary_field))
        + identity.secondary_field
    )
    return item(USER_IDENTITY_RQ, content, "user identity RQ")


def encode_user_identity_ac(identity: UserIdentityAC) -> bytes:
    """Encode a user identity negotiation sub-item 0x59 (PS3.7 D.3.3.7.2).

    :param identity: the sub-item.
    :returns: the whole sub-item, header included.
    :raises ValueError: if the response is too long.
    """
    if len(identity.server_response) > MAX_ITEM_LENGTH - _UINT16.size:
        raise ValueError("user identity AC: server response too long")
    content = _UINT16.pack(len(identity.server_response)) + identity.server_response
    return item(USER_IDENTITY_AC, content, "user identity AC")


def encode_user_information(info: UserInformation) -> bytes:
    """Encode a whole user information item 0x50 (PS3.8 9.3.2.3, Annex D).

    Sub-items are written in the order the standard describes them: maximum
    length (PS3.8 D.1), implementation class UID and version name (PS3.7
    D.3.3.2), asynchronous operations window (D.3.3.3), role selections
    (D.3.3.4), extended negotiation (D.3.3.5), common extended negotiation
    (D.3.3.6), user identity (D.3.3.7); unknown items last.  This is also
    the order DCMTK writes.

    :param info: the user information.
    :returns: the item, header included.
    :raises ValueError: if any field cannot be encoded.
    """
    parts: list[bytes] = []
    if info.max_length is not None:
        parts.append(item(MAXIMUM_LENGTH, _UINT32.pack(_check_range(info.max_length, 32, "max length")), "max"))
    if info.implementation_class_uid is not None:
        uid = encode_uid(info.implementation_class_uid, "implementation class UID", required=False)
        parts.append(item(IMPLEMENTATION_CLASS_UID, uid, "implementation class UID"))
    if info.implementation_version_name is not None:
        try:
            name = info.implementation_version_name.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("implementation version name is not Latin-1") from None
        # PS3.7 D.3.3.2: at most 16 characters.
        if len(name) > MAX_IMPLEMENTATION_VERSION_NAME:
            raise ValueError(f"implementation version name {info.implementation_version_name!r} exceeds 16 bytes")
        parts.append(item(IMPLEMENTATION_VERSION_NAME, name, "implementation version name"))
    if info.async_ops is not None:
        invoked, performed = info.async_ops
        content = _ASYNC_OPS.pack(
            _check_range(invoked, 16, "max operations invoked"), _check_range(performed, 16, "max operations performed")
        )
        parts.append(item(ASYNCHRONOUS_OPERATIONS_WINDOW, content, "asynchronous operations window"))
    parts.extend(encode_role_selection(role) for role in info.role_selections)
    parts.extend(encode_extended_negotiation(neg) for neg in info.extended_negotiations)
    parts.extend(encode_common_extended_negotiation(neg) for neg in info.common_extended_negotiations)
    if info.user_identity_rq is not None:
        parts.append(encode_user_identity_rq(info.user_identity_rq))
    if info.user_identity_ac is not None:
        parts.append(encode_user_identity_ac(info.user_identity_ac))
    for unknown in info.unknown_items:
        # A known type here would decode as that type, not as UnknownItem.
        if unknown.item_type in KNOWN_USER_INFORMATION_TYPES:
            raise ValueError(f"unknown item with known type 0x{unknown.item_type:02X}")
        _check_range(unknown.item_type, 8, "unknown item type")
        parts.append(item(unknown.item_type, unknown.data, f"unknown item 0x{unknown.item_type:02X}"))
    return item(USER_INFORMATION, b"".join(parts), "user information")
