"""DIMSE command sets: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, C-CANCEL, N-ACTION and N-EVENT-REPORT, encoded and decoded by hand.

A command set is a list of group 0000 elements, always encoded in Implicit VR
Little Endian whatever transfer syntax the presentation context negotiated
(PS3.7 6.3.1), sorted by ascending tag, starting with (0000,0000)
CommandGroupLength (PS3.7 9.3, 9.1.5 and Annex E). This module encodes and
decodes exactly that group, and nothing else, without pydicom: the decoder has
to be strict (a hostile peer feeds it) and cheap (it runs once per instance).

Decoding rules, with the reason each one exists:

* every element header is 8 bytes: group (2), element (2), length (4), little
  endian (PS3.5 7.1.2, Implicit VR); a header or value that runs past the end
  of the buffer is a protocol error;
* only group 0000 may appear (PS3.7 6.3.1: a command set holds command
  elements only);
* tags ascend strictly (PS3.5 7.1: elements are in ascending order; a
  duplicate would let two readers disagree on a value, HARDENING D20);
* undefined length (0xFFFFFFFF) is refused: no command element is a sequence;
* (0000,0100) CommandField and (0000,0800) CommandDataSetType are mandatory
  in every command (PS3.7 E.1), because without them the message can be
  neither dispatched nor framed;
* a request needs (0000,0110) MessageID and a response (0000,0120)
  MessageIDBeingRespondedTo, otherwise no answer can be correlated (PS3.7
  9.3, HARDENING D20); C-STORE-RQ needs (0000,1000) AffectedSOPInstanceUID
  (PS3.7 9.3.1.1).

Deliberate tolerance, to stay interoperable with old modalities:

* (0000,0000) CommandGroupLength may be absent or wrong: the PDV framing
  already delimits the command set, so the value is redundant and we ignore
  it on receipt (we always send a correct one);
* odd value lengths and unknown group 0000 tags (including retired ones such
  as (0000,0001) CommandLengthToEnd) are accepted; unknown tags are kept in
  :attr:`UnknownCommand.elements` only;
* a missing AffectedSOPClassUID on C-ECHO-RQ or C-STORE-RQ decodes as ``""``,
  so that the SCP can still answer with a status (e.g. 0x0122) instead of an
  abort;
* likewise for the DIMSE-N requests the gateway implements (N-ACTION-RQ,
  N-EVENT-REPORT-RQ, PS3.7 10.3.4.1 and 10.3.1.1): a missing SOP class or
  instance UID decodes as ``""`` and a missing Action / Event Type ID as
  ``0`` (no service class defines type 0, PS3.4), so that the SCP answers
  0x0118, 0x0112, 0x0123 or 0x0113 (PS3.7 10.1.4.1.10, 10.1.1.1.8) instead
  of aborting. The other DIMSE-N requests (N-GET, N-SET, N-CREATE,
  N-DELETE) stay :class:`UnknownCommand` and are answered 0x0211;
* likewise for the Query/Retrieve requests (C-FIND-RQ, C-MOVE-RQ, C-GET-RQ,
  PS3.7 9.3.2.1, 9.3.4.1, 9.3.3.1): a missing Affected SOP Class UID or
  Move Destination decodes as ``""`` and a missing Priority as 0 (medium),
  so that the SCP answers 0x0122 or 0xA801 (PS3.4 C.4.2.1.5) instead of
  aborting;
* string values are decoded as Latin-1 (never fails) and stripped of their
  padding; checking that a UID is conformant is the caller's job (HARDENING
  decision 3).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Union

from gateway.dimse.errors import DIMSEProtocolError
from gateway.dimse.status import Status


class CommandField(IntEnum):
    """Values of (0000,0100) CommandField (PS3.7 E.1, Table E.1-1).

    Requests have bit 15 clear, responses have it set. C-CANCEL-RQ is the
    exception that carries MessageIDBeingRespondedTo (PS3.7 9.3.2.3).
    """

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF


class Tag(IntEnum):
    """The group 0000 command elements this module knows (PS3.7 E.1, Table E.1-1).

    Values are the 32-bit tag ``(group << 16) | element``.
    """

    COMMAND_GROUP_LENGTH = 0x00000000  # UL
    AFFECTED_SOP_CLASS_UID = 0x00000002  # UI
    REQUESTED_SOP_CLASS_UID = 0x00000003  # UI
    COMMAND_FIELD = 0x00000100  # US
    MESSAGE_ID = 0x00000110  # US
    MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120  # US
    MOVE_DESTINATION = 0x00000600  # AE
    PRIORITY = 0x00000700  # US
    COMMAND_DATA_SET_TYPE = 0x00000800  # US
    STATUS = 0x00000900  # US
    OFFENDING_ELEMENT = 0x00000901  # AT, 1-n
    ERROR_COMMENT = 0x00000902  # LO
    ERROR_ID = 0x00000903  # US
    AFFECTED_SOP_INSTANCE_UID = 0x00001000  # UI
    REQUESTED_SOP_INSTANCE_UID = 0x00001001  # UI
    EVENT_TYPE_ID = 0x00001002  # US
    ACTION_TYPE_ID = 0x00001008  # US
    NUMBER_OF_REMAINING_SUB_OPERATIONS = 0x00001020  # US
    NUMBER_OF_COMPLETED_SUB_OPERATIONS = 0x00001021  # US
    NUMBER_OF_FAILED_SUB_OPERATIONS = 0x00001022  # US
    NUMBER_OF_WARNING_SUB_OPERATIONS = 0x00001023  # US
    MOVE_ORIGINATOR_AE_TITLE = 0x00001030  # AE
    MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031  # US


#: PS3.7 E.1: CommandDataSetType 0x0101 means "no data set"; any other value
#: means a data set follows.
DATA_SET_ABSENT = 0x0101
#: The value we send when a data set follows (the same one pynetdicom sends).
DATA_SET_PRESENT = 0x0001

#: The 8-byte Implicit VR Little Endian element header: group, element, length (PS3.5 7.1.2).
_HEADER = struct.Struct("<HHI")
#: PS3.5 7.1.1: 0xFFFFFFFF is "undefined length", which no command element may use.
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: PS3.5 Table 6.2-1: maximum lengths of the string VRs used in command sets.
_MAX_UI = 64
_MAX_AE = 16
_MAX_LO = 64


def is_request(command_field: int) -> bool:
    """Whether a Command Field value denotes a request that carries a MessageID.

    PS3.7 E.1: responses have bit 15 set. C-CANCEL-RQ (0x0FFF) is a request
    but identifies the operation it cancels with MessageIDBeingRespondedTo
    (PS3.7 9.3.2.3), so it counts as "not a request" here.

    :param command_field: the value of (0000,0100).
    :returns: True when (0000,0110) MessageID is the identifying element.
    """
    return not command_field & 0x8000 and command_field != CommandField.C_CANCEL_RQ


@dataclass(frozen=True)
class CEchoRQ:
    """C-ECHO-RQ (PS3.7 9.3.5.1).

    :ivar has_dataset: from CommandDataSetType; a conformant C-ECHO-RQ has none.
    """

    message_id: int
    affected_sop_class_uid: str
    has_dataset: bool = False


@dataclass(frozen=True)
class CEchoRSP:
    """C-ECHO-RSP (PS3.7 9.3.5.2).

    :ivar affected_sop_class_uid: U(=) in the response, ``None`` when absent.
    """

    message_id_being_responded_to: int
    affected_sop_class_uid: str | None
    status: int
    has_dataset: bool = False


@dataclass(frozen=True)
class CStoreRQ:
    """C-STORE-RQ (PS3.7 9.3.1.1).

    :ivar priority: 0 medium, 1 high, 2 low (PS3.7 9.1.1.1.7); kept as sent.
    :ivar move_originator_ae_title: set when the store is a C-MOVE sub-operation.
    :ivar has_dataset: from CommandDataSetType; a C-STORE-RQ without a data
        set decodes (``False``) so that the SCP can answer with a failure
        status (HARDENING D19).
    """

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = 0
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None
    has_dataset: bool = True


@dataclass(frozen=True)
class CStoreRSP:
    """C-STORE-RSP (PS3.7 9.3.1.2).

    :ivar affected_sop_class_uid: U(=) in the response, ``None`` when absent.
    :ivar affected_sop_instance_uid: U(=) in the response, ``None`` when absent.
    :ivar offending_element: tags (as 32-bit ints) named by a failure, or ``None``.
    """

    message_id_being_responded_to: int
    affected_sop_class_uid: str | None
    affected_sop_instance_uid: str | None
    status: int
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    has_dataset: bool = False


@dataclass(frozen=True)
class NActionRQ:
    """N-ACTION-RQ (PS3.7 10.3.4.1, Table 10.3-7).

    :ivar requested_sop_class_uid: (0000,0003); ``""`` when absent, so that
        the SCP can answer 0x0118 (no such SOP class).
    :ivar requested_sop_instance_uid: (0000,1001); ``""`` when absent (the
        SCP answers 0x0112, no such SOP instance).
    :ivar action_type_id: (0000,1008); ``0`` when absent (the SCP answers
        0x0123, no such action: no service class defines type 0).
    :ivar has_dataset: from CommandDataSetType; the Action Information
        (e.g. PS3.4 Table J.3-1) follows when True.
    """

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    action_type_id: int
    has_dataset: bool = True


@dataclass(frozen=True)
class NActionRSP:
    """N-ACTION-RSP (PS3.7 10.3.4.2, Table 10.3-8).

    :ivar affected_sop_class_uid: U in the response, ``None`` when absent.
    :ivar affected_sop_instance_uid: U in the response, ``None`` when absent.
    :ivar action_type_id: C(=): the request's Action Type ID, ``None`` when absent.
    :ivar has_dataset: whether an Action Reply follows (none for Storage
        Commitment, PS3.4 J.3.2.1.1).
    :ivar error_comment: (0000,0902), ``None`` when absent.
    """

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    has_dataset: bool = False
    error_comment: str | None = None


@dataclass(frozen=True)
class NEventReportRQ:
    """N-EVENT-REPORT-RQ (PS3.7 10.3.1.1, Table 10.3-1).

    :ivar affected_sop_class_uid: (0000,0002); ``""`` when absent (the SCP
        answers 0x0118, no such SOP class).
    :ivar affected_sop_instance_uid: (0000,1000); ``""`` when absent (the SCP
        answers 0x0112, no such SOP instance).
    :ivar event_type_id: (0000,1002); ``0`` when absent (the SCP answers
        0x0113, no such event type).
    :ivar has_dataset: from CommandDataSetType; the Event Information (e.g.
        PS3.4 Table J.3-2) follows when True.
    """

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    event_type_id: int
    has_dataset: bool = True


@dataclass(frozen=True)
class NEventReportRSP:
    """N-EVENT-REPORT-RSP (PS3.7 10.3.1.2, Table 10.3-2).

    :ivar affected_sop_class_uid: U(=) in the response, ``None`` when absent.
    :ivar affected_sop_instance_uid: U(=) in the response, ``None`` when absent.
    :ivar event_type_id: C(=): the request's Event Type ID, ``None`` when absent.
    :ivar has_dataset: whether an Event Reply follows (none for Storage
        Commitment, PS3.4 J.3.3.1.1).
    :ivar error_comment: (0000,0902), ``None`` when absent.
    """

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    event_type_id: int | None = None
    has_dataset: bool = False
    error_comment: str | None = None


@dataclass(frozen=True)
class CFindRQ:
    """C-FIND-RQ (PS3.7 9.3.2.1, Table 9.3-2).

    :ivar affected_sop_class_uid: the FIND SOP class; ``""`` when absent so
        that the SCP can answer 0x0122.
    :ivar priority: 0 medium, 1 high, 2 low (PS3.7 9.1.1.1.7); kept as sent.
    :ivar has_dataset: from CommandDataSetType; the Identifier follows when
        True (PS3.7 9.1.2.1.4: it is mandatory, so a request without one
        decodes and the SCP answers a failure).
    """

    message_id: int
    affected_sop_class_uid: str
    priority: int = 0
    has_dataset: bool = True


@dataclass(frozen=True)
class CFindRSP:
    """C-FIND-RSP (PS3.7 9.3.2.2, Table 9.3-3).

    :ivar affected_sop_class_uid: U(=) in the response, ``None`` when absent.
    :ivar status: 0xFF00/0xFF01 pending (an Identifier follows), otherwise
        final (PS3.4 C.4.1.1.4).
    :ivar error_comment: (0000,0902), ``None`` when absent.
    :ivar offending_element: (0000,0901) tags as 32-bit ints, ``None`` when absent.
    :ivar has_dataset: whether an Identifier follows (a match on pending).
    """

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    has_dataset: bool = False


@dataclass(frozen=True)
class CMoveRQ:
    """C-MOVE-RQ (PS3.7 9.3.4.1, Table 9.3-6).

    :ivar affected_sop_class_uid: the MOVE SOP class; ``""`` when absent (0x0122).
    :ivar move_destination: (0000,0600), the AE title the instances go to;
        ``""`` when absent, so that the SCP answers 0xA801 (PS3.4 C.4.2.1.5).
    :ivar priority: 0 medium, 1 high, 2 low (PS3.7 9.1.1.1.7).
    :ivar has_dataset: whether the Identifier follows (PS3.7 9.1.4.1.5: mandatory).
    """

    message_id: int
    affected_sop_class_uid: str
    move_destination: str
    priority: int = 0
    has_dataset: bool = True


@dataclass(frozen=True)
class CGetRQ:
    """C-GET-RQ (PS3.7 9.3.3.1, Table 9.3-4).

    :ivar affected_sop_class_uid: the GET SOP class; ``""`` when absent (0x0122).
    :ivar priority: 0 medium, 1 high, 2 low (PS3.7 9.1.1.1.7).
    :ivar has_dataset: whether the Identifier follows (PS3.7 9.1.3.1.4: mandatory).
    """

    message_id: int
    affected_sop_class_uid: str
    priority: int = 0
    has_dataset: bool = True


@dataclass(frozen=True)
class CMoveRSP:
    """C-MOVE-RSP (PS3.7 9.3.4.2, Table 9.3-7).

    The four counts are (0000,1020)-(0000,1023): Remaining is required on
    pending responses, the others on pending and allowed on the final one
    (PS3.7 9.1.4.1.8-9.1.4.1.11); ``None`` means absent.

    :ivar affected_sop_class_uid: U(=) in the response, ``None`` when absent.
    :ivar has_dataset: whether an Identifier follows (the Failed SOP
        Instance UID List (0008,0058) on a failure or warning final,
        PS3.4 C.4.2.1.4).
    """

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    has_dataset: bool = False


@dataclass(frozen=True)
class CGetRSP:
    """C-GET-RSP (PS3.7 9.3.3.2, Table 9.3-5); the same fields as :class:`CMoveRSP`.

    :ivar has_dataset: whether an Identifier follows (the Failed SOP
        Instance UID List (0008,0058), PS3.4 C.4.3.1.3.1).
    """

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    has_dataset: bool = False


@dataclass(frozen=True)
class CCancelRQ:
    """C-CANCEL-RQ (PS3.7 9.3.2.3, Table 9.3-3a; also used for C-MOVE and C-GET, 9.3.3.3, 9.3.4.3).

    :ivar message_id_being_responded_to: the Message ID of the C-FIND,
        C-MOVE or C-GET request to cancel (PS3.7 9.3.2.3).
    :ivar has_dataset: from CommandDataSetType; a conformant one has none.
    """

    message_id_being_responded_to: int
    has_dataset: bool = False


@dataclass(frozen=True)
class UnknownCommand:
    """Any command this module does not type (e.g. N-GET, N-SET, N-CREATE, N-DELETE), kept raw.

    The SCP uses it to answer a well-formed request it does not implement with
    0x0211 (unrecognized operation, HARDENING D21), see
    :func:`unrecognized_operation_response`.

    :ivar command_field: the value of (0000,0100).
    :ivar message_id: (0000,0110) MessageID for a request, or (0000,0120)
        MessageIDBeingRespondedTo for a response or a C-CANCEL-RQ (see
        :func:`is_request`).
    :ivar elements: every other element of the command set, tag -> raw value
        bytes (padding included), without (0000,0000), (0000,0100), the
        message ID element and (0000,0800).
    :ivar has_dataset: from CommandDataSetType.
    """

    command_field: int
    message_id: int
    elements: Mapping[int, bytes] = field(default_factory=dict)
    has_dataset: bool = False


#: Every decoded command.
Command = Union[
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    NActionRQ,
    NActionRSP,
    NEventReportRQ,
    NEventReportRSP,
    CFindRQ,
    CFindRSP,
    CMoveRQ,
    CMoveRSP,
    CGetRQ,
    CGetRSP,
    CCancelRQ,
    UnknownCommand,
]

#: The Query/Retrieve requests (PS3.7 9.3.2-9.3.4).
QRRequest = Union[CFindRQ, CMoveRQ, CGetRQ]
#: The Query/Retrieve responses.
QRResponse = Union[CFindRSP, CMoveRSP, CGetRSP]


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def _split_elements(data: bytes | memoryview) -> dict[int, bytes]:
    """Split an Implicit VR LE group 0000 byte string into tag -> value bytes.

    :raises DIMSEProtocolError: on truncation, a foreign group, undefined
        length, or tags that are not strictly ascending (PS3.5 7.1, PS3.7 6.3.1).
    """
    view = memoryview(data)
    size = len(view)
    offset = 0
    previous = -1
    elements: dict[int, bytes] = {}
    while offset < size:
        # PS3.5 7.1.2: a header is 8 bytes; fewer left means a cut-off element.
        if size - offset < _HEADER.size:
            raise DIMSEProtocolError(
                f"command set truncated: {size - offset} bytes left at offset {offset}, "
                "need an 8-byte element header"
            )
        group, element, length = _HEADER.unpack_from(view, offset)
        tag = (group << 16) | element
        # PS3.7 6.3.1: a command set contains group 0000 elements only.
        if group != 0x0000:
            raise DIMSEProtocolError(f"tag ({group:04X},{element:04X}) outside group 0000 in command set")
        # PS3.5 7.1: ascending order; equal means duplicate (HARDENING D20).
        if tag == previous:
            raise DIMSEProtocolError(f"duplicate command element (0000,{element:04X})")
        if tag < previous:
            raise DIMSEProtocolError(f"command element (0000,{element:04X}) out of ascending order")
        # No command element is a sequence, so undefined length is never valid.
        if length == _UNDEFINED_LENGTH:
            raise DIMSEProtocolError(f"undefined length on command element (0000,{element:04X})")
        offset += _HEADER.size
        # The value must fit in what is left; checked before slicing (HARDENING R4).
        if length > size - offset:
            raise DIMSEProtocolError(
                f"command element (0000,{element:04X}) length {length} exceeds the "
                f"{size - offset} bytes left"
            )
        elements[tag] = bytes(view[offset : offset + length])
        offset += length
        previous = tag
    return elements


def _us(elements: Mapping[int, bytes], tag: Tag) -> int | None:
    """Decode an optional US element (2 bytes, little endian, PS3.5 6.2).

    :raises DIMSEProtocolError: if the value is not exactly 2 bytes.
    """
    raw = elements.get(tag)
    if raw is None:
        return None
    if len(raw) != 2:
        raise DIMSEProtocolError(f"{tag.name} has length {len(raw)}, a US needs 2")
    value: int = int.from_bytes(raw, "little")
    return value


def _text(elements: Mapping[int, bytes], tag: Tag) -> str | None:
    """Decode an optional UI, AE or LO element, padding removed.

    UI pads with NUL, AE and LO with spaces (PS3.5 6.2); both are stripped at
    either end, since leading spaces are insignificant for AE and LO too.
    Latin-1 never fails, so a hostile value reaches policy code intact.
    """
    raw = elements.get(tag)
    if raw is None:
        return None
    return raw.decode("latin-1").strip(" \x00")


def _at(elements: Mapping[int, bytes], tag: Tag) -> tuple[int, ...] | None:
    """Decode an optional AT element: pairs of little-endian uint16 (PS3.5 6.2).

    :raises DIMSEProtocolError: if the length is not a multiple of 4.
    """
    raw = elements.get(tag)
    if raw is None:
        return None
    if len(raw) % 4:
        raise DIMSEProtocolError(f"{tag.name} has length {len(raw)}, not a multiple of 4")
    values = struct.unpack(f"<{len(raw) // 2}H", raw)
    return tuple((values[i] << 16) | values[i + 1] for i in range(0, len(values), 2))


def _require(value: int | None, what: str, command_field: int) -> int:
    """Return ``value`` or raise because a mandatory element is missing (HARDENING D20)."""
    if value is None:
        raise DIMSEProtocolError(f"{what} missing from command 0x{command_field:04X}")
    return value


def decode_command(data: bytes | memoryview) -> Command:
    """Decode one complete command set (all its fragments joined).

    :param data: the Implicit VR Little Endian command set.
    :returns: a :class:`CEchoRQ`, :class:`CEchoRSP`, :class:`CStoreRQ`,
        :class:`CStoreRSP`, :class:`NActionRQ`, :class:`NActionRSP`,
        :class:`NEventReportRQ`, :class:`NEventReportRSP`, :class:`CFindRQ`,
        :class:`CFindRSP`, :class:`CMoveRQ`, :class:`CMoveRSP`,
        :class:`CGetRQ`, :class:`CGetRSP`, :class:`CCancelRQ`, or an
        :class:`UnknownCommand` for any other Command Field; each carries
        ``has_dataset`` (PS3.7 E.1).
    :raises DIMSEProtocolError: for any of the violations listed in the module
        docstring; the association then ends in A-ABORT(0, 0).
    """
    elements = _split_elements(data)
    # PS3.7 E.1: CommandField is mandatory in every message.
    command_field = _us(elements, Tag.COMMAND_FIELD)
    if command_field is None:
        raise DIMSEProtocolError("CommandField (0000,0100) missing from command set")
    # PS3.7 E.1: CommandDataSetType is mandatory; without it the message cannot be framed.
    data_set_type = _require(_us(elements, Tag.COMMAND_DATA_SET_TYPE), "CommandDataSetType", command_field)
    has_dataset = data_set_type != DATA_SET_ABSENT
    # PS3.7 9.3 / 10.3: requests are identified by MessageID, responses by
    # MessageIDBeingRespondedTo; without it no response can be correlated.
    if is_request(command_field):
        message_id = _require(_us(elements, Tag.MESSAGE_ID), "MessageID", command_field)
    else:
        message_id = _require(
            _us(elements, Tag.MESSAGE_ID_BEING_RESPONDED_TO), "MessageIDBeingRespondedTo", command_field
        )

    if command_field == CommandField.C_ECHO_RQ:
        # PS3.7 9.3.5.1.
        return CEchoRQ(message_id, _text(elements, Tag.AFFECTED_SOP_CLASS_UID) or "", has_dataset)
    if command_field == CommandField.C_STORE_RQ:
        # PS3.7 9.3.1.1: the instance UID is mandatory; without it the RSP
        # cannot name the instance and the spool cannot either (HARDENING D20).
        instance_uid = _text(elements, Tag.AFFECTED_SOP_INSTANCE_UID)
        if not instance_uid:
            raise DIMSEProtocolError("AffectedSOPInstanceUID (0000,1000) missing from C-STORE-RQ")
        priority = _us(elements, Tag.PRIORITY)
        return CStoreRQ(
            message_id=message_id,
            affected_sop_class_uid=_text(elements, Tag.AFFECTED_SOP_CLASS_UID) or "",
            affected_sop_instance_uid=instance_uid,
            priority=0 if priority is None else priority,
            move_originator_ae_title=_text(elements, Tag.MOVE_ORIGINATOR_AE_TITLE),
            move_originator_message_id=_us(elements, Tag.MOVE_ORIGINATOR_MESSAGE_ID),
            has_dataset=has_dataset,
        )
    if command_field in (CommandField.C_ECHO_RSP, CommandField.C_STORE_RSP):
        # PS3.7 9.3.1.2 / 9.3.5.2: Status is mandatory; a response without one
        # cannot be interpreted by the requestor.
        status = _require(_us(elements, Tag.STATUS), "Status", command_field)
        if command_field == CommandField.C_ECHO_RSP:
            return CEchoRSP(message_id, _text(elements, Tag.AFFECTED_SOP_CLASS_UID), status, has_dataset)
        return CStoreRSP(
            message_id_being_responded_to=message_id,
            affected_sop_class_uid=_text(elements, Tag.AFFECTED_SOP_CLASS_UID),
            affected_sop_instance_uid=_text(elements, Tag.AFFECTED_SOP_INSTANCE_UID),
            status=status,
            error_comment=_text(elements, Tag.ERROR_COMMENT),
            offending_element=_at(elements, Tag.OFFENDING_ELEMENT),
            has_dataset=has_dataset,
        )
    if command_field == CommandField.N_ACTION_RQ:
        # PS3.7 10.3.4.1: class, instance and action type are mandatory, but a
        # response can still be built without them, so they decode as ""/0
        # and the SCP answers a status (module docstring).
        return NActionRQ(
            message_id=message_id,
            requested_sop_class_uid=_text(elements, Tag.REQUESTED_SOP_CLASS_UID) or "",
            requested_sop_instance_uid=_text(elements, Tag.REQUESTED_SOP_INSTANCE_UID) or "",
            action_type_id=_us(elements, Tag.ACTION_TYPE_ID) or 0,
            has_dataset=has_dataset,
        )
    if command_field == CommandField.N_EVENT_REPORT_RQ:
        # PS3.7 10.3.1.1: as for N-ACTION-RQ.
        return NEventReportRQ(
            message_id=message_id,
            affected_sop_class_uid=_text(elements, Tag.AFFECTED_SOP_CLASS_UID) or "",
            affected_sop_instance_uid=_text(elements, Tag.AFFECTED_SOP_INSTANCE_UID) or "",
            event_type_id=_us(elements, Tag.EVENT_TYPE_ID) or 0,
            has_dataset=has_dataset,
        )
    if command_field == CommandField.N_ACTION_RSP:
        # PS3.7 10.3.4.2: Status is mandatory (as for every response).
        return NActionRSP(
            message_id_being_responded_to=message_id,
            status=_require(_us(elements, Tag.STATUS), "Status", command_field),
            affected_sop_class_uid=_text(elements, Tag.AFFECTED_SOP_CLASS_UID),
            affected_sop_instance_uid=_text(elements, Tag.AFFECTED_SOP_INSTANCE_UID),
            action_type_id=_us(elements, Tag.ACTION_TYPE_ID),
            has_dataset=has_dataset,
            error_comment=_text(elements, Tag.ERROR_COMMENT),
        )
    if command_field == CommandField.N_EVENT_REPORT_RSP:
        # PS3.7 10.3.1.2: Status is mandatory.
        return NEventReportRSP(
            message_id_being_responded_to=message_id,
            status=_require(_us(elements, Tag.STATUS), "Status", command_field),
            affected_sop_class_uid=_text(elements, Tag.AFFECTED_SOP_CLASS_UID),
            affected_sop_instance_uid=_text(elements, Tag.AFFECTED_SOP_INSTANCE_UID),
            event_type_id=_us(elements, Tag.EVENT_TYPE_ID),
            has_dataset=has_dataset,
            error_comment=_text(elements, Tag.ERROR_COMMENT),
        )
    if command_field in (CommandField.C_FIND_RQ, CommandField.C_GET_RQ, CommandField.C_MOVE_RQ):
        # PS3.7 9.3.2.1, 9.3.3.1, 9.3.4.1: class, priority (and destination)
        # are mandatory, but a response can still be built without them, so
        # they decode as ""/0 and the SCP answers a status (module docstring).
        sop_class = _text(elements, Tag.AFFECTED_SOP_CLASS_UID) or ""
        qr_priority = _us(elements, Tag.PRIORITY) or 0
        if command_field == CommandField.C_FIND_RQ:
            return CFindRQ(message_id, sop_class, qr_priority, has_dataset)
        if command_field == CommandField.C_GET_RQ:
            return CGetRQ(message_id, sop_class, qr_priority, has_dataset)
        return CMoveRQ(
            message_id, sop_class, _text(elements, Tag.MOVE_DESTINATION) or "", qr_priority, has_dataset
        )
    if command_field == CommandField.C_FIND_RSP:
        # PS3.7 9.3.2.2: Status is mandatory.
        return CFindRSP(
            message_id_being_responded_to=message_id,
            status=_require(_us(elements, Tag.STATUS), "Status", command_field),
            affected_sop_class_uid=_text(elements, Tag.AFFECTED_SOP_CLASS_UID),
            error_comment=_text(elements, Tag.ERROR_COMMENT),
            offending_element=_at(elements, Tag.OFFENDING_ELEMENT),
            has_dataset=has_dataset,
        )
    if command_field in (CommandField.C_MOVE_RSP, CommandField.C_GET_RSP):
        # PS3.7 9.3.4.2 / 9.3.3.2: Status is mandatory; the counts are
        # conditional (PS3.7 9.1.4.1.8-11) and checked by the caller.
        rsp_type = CMoveRSP if command_field == CommandField.C_MOVE_RSP else CGetRSP
        return rsp_type(
            message_id_being_responded_to=message_id,
            status=_require(_us(elements, Tag.STATUS), "Status", command_field),
            affected_sop_class_uid=_text(elements, Tag.AFFECTED_SOP_CLASS_UID),
            remaining=_us(elements, Tag.NUMBER_OF_REMAINING_SUB_OPERATIONS),
            completed=_us(elements, Tag.NUMBER_OF_COMPLETED_SUB_OPERATIONS),
            failed=_us(elements, Tag.NUMBER_OF_FAILED_SUB_OPERATIONS),
            warning=_us(elements, Tag.NUMBER_OF_WARNING_SUB_OPERATIONS),
            error_comment=_text(elements, Tag.ERROR_COMMENT),
            offending_element=_at(elements, Tag.OFFENDING_ELEMENT),
            has_dataset=has_dataset,
        )
    if command_field == CommandField.C_CANCEL_RQ:
        # PS3.7 9.3.2.3: only the Message ID Being Responded To identifies it.
        return CCancelRQ(message_id, has_dataset)
    # Anything else is kept raw; the identifying elements are already fields.
    id_tag = Tag.MESSAGE_ID if is_request(command_field) else Tag.MESSAGE_ID_BEING_RESPONDED_TO
    rest = {
        tag: value
        for tag, value in elements.items()
        if tag not in (Tag.COMMAND_GROUP_LENGTH, Tag.COMMAND_FIELD, id_tag, Tag.COMMAND_DATA_SET_TYPE)
    }
    return UnknownCommand(command_field, message_id, rest, has_dataset)


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _enc_us(value: int) -> bytes:
    """Encode a US value (PS3.5 6.2).

    :raises ValueError: if ``value`` does not fit in 16 bits.
    """
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value!r} does not fit in a US (0..65535)")
    return value.to_bytes(2, "little")


def _enc_ui(value: str) -> bytes:
    """Encode a UI value, NUL-padded to even length (PS3.5 6.2, 9.1).

    :raises ValueError: if the UID is not ASCII or longer than 64 bytes.
    """
    raw = value.encode("ascii")
    if len(raw) > _MAX_UI:
        raise ValueError(f"UID {value!r} is longer than {_MAX_UI} bytes")
    return raw + b"\x00" if len(raw) % 2 else raw


def _enc_ae(value: str) -> bytes:
    """Encode an AE value, space-padded to even length (PS3.5 6.2).

    :raises ValueError: if the title is not ASCII or longer than 16 bytes.
    """
    raw = value.encode("ascii")
    if len(raw) > _MAX_AE:
        raise ValueError(f"AE title {value!r} is longer than {_MAX_AE} bytes")
    return raw + b" " if len(raw) % 2 else raw


def _enc_lo(value: str) -> bytes:
    """Encode an LO value, sanitised, cut to 64 characters and space-padded (PS3.5 6.2).

    An error comment is built from our own diagnostics, which may be long or
    contain characters LO forbids (backslash is the value delimiter, control
    characters are not in the default repertoire): a backslash becomes
    ``/``, a control character a space and a non-ASCII character ``?``,
    rather than making the response unencodable.
    """
    cleaned = "".join(
        " " if (ch < " " or ch == "\x7f") else ("/" if ch == "\\" else ch) for ch in value
    )
    raw = cleaned.encode("ascii", "replace")[:_MAX_LO].rstrip(b" ")
    return raw + b" " if len(raw) % 2 else raw


def _enc_at(tags: tuple[int, ...]) -> bytes:
    """Encode an AT value: each tag as two little-endian uint16 (PS3.5 6.2)."""
    return b"".join(struct.pack("<HH", (t >> 16) & 0xFFFF, t & 0xFFFF) for t in tags)


def _assemble(elements: Mapping[int, bytes]) -> bytes:
    """Sort elements, prepend (0000,0000) CommandGroupLength, and serialise (PS3.7 6.3.1, 9.1.5).

    The group length counts every byte after its own element (PS3.5 7.2).
    """
    body = b"".join(
        _HEADER.pack(0x0000, tag & 0xFFFF, len(value)) + value
        for tag, value in sorted(elements.items())
        if tag != Tag.COMMAND_GROUP_LENGTH
    )
    return _HEADER.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


def _data_set_type(has_dataset: bool) -> bytes:
    """The CommandDataSetType value for a message (PS3.7 E.1)."""
    return _enc_us(DATA_SET_PRESENT if has_dataset else DATA_SET_ABSENT)


def encode_command(cmd: Command) -> bytes:
    """Encode a command set in Implicit VR Little Endian with its group length first.

    :param cmd: the command to encode.
    :returns: the command set bytes (always of even length).
    :raises ValueError: if a value cannot be encoded (UID not ASCII or too
        long, AE title too long, message ID outside 0..65535).
    """
    el: dict[int, bytes] = {}
    match cmd:
        case CEchoRQ():
            # PS3.7 9.3.5.1.
            el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.C_ECHO_RQ)
            el[Tag.MESSAGE_ID] = _enc_us(cmd.message_id)
        case CEchoRSP():
            # PS3.7 9.3.5.2.
            if cmd.affected_sop_class_uid is not None:
                el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.C_ECHO_RSP)
            el[Tag.MESSAGE_ID_BEING_RESPONDED_TO] = _enc_us(cmd.message_id_being_responded_to)
            el[Tag.STATUS] = _enc_us(cmd.status)
        case CStoreRQ():
            # PS3.7 9.3.1.1.
            el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.C_STORE_RQ)
            el[Tag.MESSAGE_ID] = _enc_us(cmd.message_id)
            el[Tag.PRIORITY] = _enc_us(cmd.priority)
            el[Tag.AFFECTED_SOP_INSTANCE_UID] = _enc_ui(cmd.affected_sop_instance_uid)
            if cmd.move_originator_ae_title is not None:
                el[Tag.MOVE_ORIGINATOR_AE_TITLE] = _enc_ae(cmd.move_originator_ae_title)
            if cmd.move_originator_message_id is not None:
                el[Tag.MOVE_ORIGINATOR_MESSAGE_ID] = _enc_us(cmd.move_originator_message_id)
        case CStoreRSP():
            # PS3.7 9.3.1.2.
            if cmd.affected_sop_class_uid is not None:
                el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.C_STORE_RSP)
            el[Tag.MESSAGE_ID_BEING_RESPONDED_TO] = _enc_us(cmd.message_id_being_responded_to)
            el[Tag.STATUS] = _enc_us(cmd.status)
            if cmd.offending_element:
                el[Tag.OFFENDING_ELEMENT] = _enc_at(cmd.offending_element)
            if cmd.error_comment is not None:
                el[Tag.ERROR_COMMENT] = _enc_lo(cmd.error_comment)
            if cmd.affected_sop_instance_uid is not None:
                el[Tag.AFFECTED_SOP_INSTANCE_UID] = _enc_ui(cmd.affected_sop_instance_uid)
        case NActionRQ():
            # PS3.7 10.3.4.1 (fields in PS3.7 E.1).
            el[Tag.REQUESTED_SOP_CLASS_UID] = _enc_ui(cmd.requested_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.N_ACTION_RQ)
            el[Tag.MESSAGE_ID] = _enc_us(cmd.message_id)
            el[Tag.REQUESTED_SOP_INSTANCE_UID] = _enc_ui(cmd.requested_sop_instance_uid)
            el[Tag.ACTION_TYPE_ID] = _enc_us(cmd.action_type_id)
        case NEventReportRQ():
            # PS3.7 10.3.1.1.
            el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.N_EVENT_REPORT_RQ)
            el[Tag.MESSAGE_ID] = _enc_us(cmd.message_id)
            el[Tag.AFFECTED_SOP_INSTANCE_UID] = _enc_ui(cmd.affected_sop_instance_uid)
            el[Tag.EVENT_TYPE_ID] = _enc_us(cmd.event_type_id)
        case NActionRSP() | NEventReportRSP():
            # PS3.7 10.3.4.2 / 10.3.1.2: the same shape, one type ID each.
            if isinstance(cmd, NActionRSP):
                el[Tag.COMMAND_FIELD] = _enc_us(CommandField.N_ACTION_RSP)
                type_tag, type_id = Tag.ACTION_TYPE_ID, cmd.action_type_id
            else:
                el[Tag.COMMAND_FIELD] = _enc_us(CommandField.N_EVENT_REPORT_RSP)
                type_tag, type_id = Tag.EVENT_TYPE_ID, cmd.event_type_id
            if cmd.affected_sop_class_uid is not None:
                el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.MESSAGE_ID_BEING_RESPONDED_TO] = _enc_us(cmd.message_id_being_responded_to)
            el[Tag.STATUS] = _enc_us(cmd.status)
            if cmd.error_comment is not None:
                el[Tag.ERROR_COMMENT] = _enc_lo(cmd.error_comment)
            if cmd.affected_sop_instance_uid is not None:
                el[Tag.AFFECTED_SOP_INSTANCE_UID] = _enc_ui(cmd.affected_sop_instance_uid)
            if type_id is not None:
                el[type_tag] = _enc_us(type_id)
        case CFindRQ() | CGetRQ():
            # PS3.7 9.3.2.1 / 9.3.3.1.
            el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(
                CommandField.C_FIND_RQ if isinstance(cmd, CFindRQ) else CommandField.C_GET_RQ
            )
            el[Tag.MESSAGE_ID] = _enc_us(cmd.message_id)
            el[Tag.PRIORITY] = _enc_us(cmd.priority)
        case CMoveRQ():
            # PS3.7 9.3.4.1.
            el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.C_MOVE_RQ)
            el[Tag.MESSAGE_ID] = _enc_us(cmd.message_id)
            el[Tag.MOVE_DESTINATION] = _enc_ae(cmd.move_destination)
            el[Tag.PRIORITY] = _enc_us(cmd.priority)
        case CFindRSP() | CMoveRSP() | CGetRSP():
            # PS3.7 9.3.2.2 / 9.3.4.2 / 9.3.3.2.
            if isinstance(cmd, CFindRSP):
                el[Tag.COMMAND_FIELD] = _enc_us(CommandField.C_FIND_RSP)
            else:
                el[Tag.COMMAND_FIELD] = _enc_us(
                    CommandField.C_MOVE_RSP if isinstance(cmd, CMoveRSP) else CommandField.C_GET_RSP
                )
                for tag, count in (
                    (Tag.NUMBER_OF_REMAINING_SUB_OPERATIONS, cmd.remaining),
                    (Tag.NUMBER_OF_COMPLETED_SUB_OPERATIONS, cmd.completed),
                    (Tag.NUMBER_OF_FAILED_SUB_OPERATIONS, cmd.failed),
                    (Tag.NUMBER_OF_WARNING_SUB_OPERATIONS, cmd.warning),
                ):
                    if count is not None:
                        el[tag] = _enc_us(count)
            if cmd.affected_sop_class_uid is not None:
                el[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(cmd.affected_sop_class_uid)
            el[Tag.MESSAGE_ID_BEING_RESPONDED_TO] = _enc_us(cmd.message_id_being_responded_to)
            el[Tag.STATUS] = _enc_us(cmd.status)
            if cmd.offending_element:
                el[Tag.OFFENDING_ELEMENT] = _enc_at(cmd.offending_element)
            if cmd.error_comment is not None:
                el[Tag.ERROR_COMMENT] = _enc_lo(cmd.error_comment)
        case CCancelRQ():
            # PS3.7 9.3.2.3.
            el[Tag.COMMAND_FIELD] = _enc_us(CommandField.C_CANCEL_RQ)
            el[Tag.MESSAGE_ID_BEING_RESPONDED_TO] = _enc_us(cmd.message_id_being_responded_to)
        case UnknownCommand():
            # Raw elements as given, then the identifying ones on top.
            el.update(cmd.elements)
            el[Tag.COMMAND_FIELD] = _enc_us(cmd.command_field)
            id_tag = Tag.MESSAGE_ID if is_request(cmd.command_field) else Tag.MESSAGE_ID_BEING_RESPONDED_TO
            el[id_tag] = _enc_us(cmd.message_id)
    el[Tag.COMMAND_DATA_SET_TYPE] = _data_set_type(cmd.has_dataset)
    return _assemble(el)


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


def echo_response(rq: CEchoRQ, status: int = Status.SUCCESS) -> CEchoRSP:
    """Build the C-ECHO-RSP answering ``rq`` (PS3.7 9.3.5.2: SOP class echoed, U(=)).

    :param rq: the request.
    :param status: the status to answer, success by default.
    :returns: the response.
    """
    return CEchoRSP(rq.message_id, rq.affected_sop_class_uid or None, status)


def store_response(
    rq: CStoreRQ,
    status: int,
    *,
    error_comment: str | None = None,
    offending_element: tuple[int, ...] | None = None,
) -> CStoreRSP:
    """Build the C-STORE-RSP answering ``rq`` (PS3.7 9.3.1.2: class and instance echoed).

    :param rq: the request.
    :param status: the status (see :mod:`gateway.dimse.status`).
    :param error_comment: an optional (0000,0902) text; sanitised on encoding.
    :param offending_element: optional (0000,0901) tags.
    :returns: the response.
    """
    return CStoreRSP(
        message_id_being_responded_to=rq.message_id,
        affected_sop_class_uid=rq.affected_sop_class_uid or None,
        affected_sop_instance_uid=rq.affected_sop_instance_uid,
        status=status,
        error_comment=error_comment,
        offending_element=offending_element,
    )


def action_response(rq: NActionRQ, status: int, comment: str = "") -> NActionRSP:
    """Build the N-ACTION-RSP answering ``rq`` (PS3.7 10.3.4.2).

    The Affected SOP Class and Instance UIDs echo the request's Requested
    ones (U, PS3.7 10.1.4 and Table 10.3-8), and the Action Type ID is
    echoed (C(=)). No Action Reply follows:
    Storage Commitment defines none (PS3.4 J.3.2.1.1).

    :param rq: the request.
    :param status: the status (see :mod:`gateway.dimse.status`).
    :param comment: an optional (0000,0902) Error Comment; sent only when
        non-empty, sanitised on encoding.
    :returns: the response.
    """
    return NActionRSP(
        message_id_being_responded_to=rq.message_id,
        status=status,
        affected_sop_class_uid=rq.requested_sop_class_uid or None,
        affected_sop_instance_uid=rq.requested_sop_instance_uid or None,
        action_type_id=rq.action_type_id or None,
        error_comment=comment or None,
    )


def event_report_response(rq: NEventReportRQ, status: int, comment: str = "") -> NEventReportRSP:
    """Build the N-EVENT-REPORT-RSP answering ``rq`` (PS3.7 10.3.1.2).

    Class, instance and Event Type ID are echoed (U(=), C(=), PS3.7
    10.1.1.1); no Event Reply follows (PS3.4 J.3.3.1.1 defines none).

    :param rq: the request.
    :param status: the status, e.g. 0x0000, 0x0110 or 0x0112.
    :param comment: an optional (0000,0902) Error Comment; sent only when non-empty.
    :returns: the response.
    """
    return NEventReportRSP(
        message_id_being_responded_to=rq.message_id,
        status=status,
        affected_sop_class_uid=rq.affected_sop_class_uid or None,
        affected_sop_instance_uid=rq.affected_sop_instance_uid or None,
        event_type_id=rq.event_type_id or None,
        error_comment=comment or None,
    )


def unrecognized_operation_response(rq: UnknownCommand) -> UnknownCommand | None:
    """Build the 0x0211 (unrecognized operation) response to an unknown request.

    PS3.7 C.5: the response carries the request's Command Field with bit 15
    set, MessageIDBeingRespondedTo, no data set, and echoes the Affected SOP
    Class UID when the request had one (HARDENING D21).

    :param rq: the decoded unknown command.
    :returns: the response, or ``None`` when ``rq`` is itself a response or a
        C-CANCEL-RQ (neither is ever answered).
    """
    if not is_request(rq.command_field):
        return None
    elements: dict[int, bytes] = {Tag.STATUS: _enc_us(Status.UNRECOGNIZED_OPERATION)}
    sop_class = rq.elements.get(Tag.AFFECTED_SOP_CLASS_UID)
    if sop_class is not None:
        elements[Tag.AFFECTED_SOP_CLASS_UID] = sop_class
    return UnknownCommand(rq.command_field | 0x8000, rq.message_id, elements, has_dataset=False)


def _clip_count(value: int | None) -> int | None:
    """A sub-operation count as a US: ``None`` stays absent, larger values saturate at 0xFFFF.

    (0000,1020)-(0000,1023) are US (PS3.7 E.1); a study of more than 65535
    instances cannot be counted exactly, so we saturate rather than fail to
    encode the response.
    """
    if value is None:
        return None
    return max(0, min(value, 0xFFFF))


def find_response(
    rq: CFindRQ,
    status: int,
    has_identifier: bool = False,
    *,
    error_comment: str | None = None,
    offending_element: tuple[int, ...] | None = None,
) -> CFindRSP:
    """Build a C-FIND-RSP answering ``rq`` (PS3.7 9.3.2.2: SOP class echoed, U(=)).

    :param rq: the request.
    :param status: 0xFF00/0xFF01 for a match, else a final status (PS3.4 C.4.1.1.4).
    :param has_identifier: whether an Identifier follows (a match on pending).
    :param error_comment: optional (0000,0902) (PS3.7 9.1.2.1.6); sanitised on encoding.
    :param offending_element: optional (0000,0901) tags.
    :returns: the response.
    """
    return CFindRSP(
        message_id_being_responded_to=rq.message_id,
        status=status,
        affected_sop_class_uid=rq.affected_sop_class_uid or None,
        error_comment=error_comment or None,
        offending_element=offending_element,
        has_dataset=has_identifier,
    )


def _sub_operation_fields(
    rq: "CMoveRQ | CGetRQ",
    status: int,
    remaining: int | None,
    completed: int | None,
    failed: int | None,
    warning: int | None,
    has_identifier: bool,
    error_comment: str | None,
    offending_element: tuple[int, ...] | None,
) -> dict[str, object]:
    """The fields a C-MOVE-RSP and a C-GET-RSP share (PS3.7 9.3.4.2, 9.3.3.2): counts saturated at 65535."""
    return dict(
        message_id_being_responded_to=rq.message_id,
        status=status,
        affected_sop_class_uid=rq.affected_sop_class_uid or None,
        remaining=_clip_count(remaining),
        completed=_clip_count(completed),
        failed=_clip_count(failed),
        warning=_clip_count(warning),
        error_comment=error_comment or None,
        offending_element=offending_element,
        has_dataset=has_identifier,
    )


def move_response(
    rq: CMoveRQ,
    status: int,
    remaining: int | None = None,
    completed: int | None = None,
    failed: int | None = None,
    warning: int | None = None,
    *,
    has_identifier: bool = False,
    error_comment: str | None = None,
    offending_element: tuple[int, ...] | None = None,
) -> CMoveRSP:
    """Build a C-MOVE-RSP answering ``rq`` (PS3.7 9.3.4.2).

    On pending, PS3.7 9.1.4.1.8-11 require all four counts; on the final
    response Remaining is absent except after a cancel, and the others may
    be sent. Counts larger than a US saturate at 65535.

    :param rq: the request.
    :param status: see PS3.4 C.4.2.1.5.
    :param remaining: (0000,1020) or ``None``.
    :param completed: (0000,1021) or ``None``.
    :param failed: (0000,1022) or ``None``.
    :param warning: (0000,1023) or ``None``.
    :param has_identifier: whether an Identifier (Failed SOP Instance UID
        List, PS3.4 C.4.2.1.4) follows.
    :param error_comment: optional (0000,0902); sanitised on encoding.
    :param offending_element: optional (0000,0901) tags.
    :returns: the response.
    """
    return CMoveRSP(
        **_sub_operation_fields(
            rq, status, remaining, completed, failed, warning, has_identifier, error_comment, offending_element
        )
    )


def get_response(
    rq: CGetRQ,
    status: int,
    remaining: int | None = None,
    completed: int | None = None,
    failed: int | None = None,
    warning: int | None = None,
    *,
    has_identifier: bool = False,
    error_comment: str | None = None,
    offending_element: tuple[int, ...] | None = None,
) -> CGetRSP:
    """Build a C-GET-RSP answering ``rq`` (PS3.7 9.3.3.2); as :func:`move_response`.

    :param rq: the request.
    :param status: see PS3.4 C.4.3.1.4.
    :param remaining: (0000,1020) or ``None``.
    :param completed: (0000,1021) or ``None``.
    :param failed: (0000,1022) or ``None``.
    :param warning: (0000,1023) or ``None``.
    :param has_identifier: whether the Failed SOP Instance UID List follows.
    :param error_comment: optional (0000,0902); sanitised on encoding.
    :param offending_element: optional (0000,0901) tags.
    :returns: the response.
    """
    return CGetRSP(
        **_sub_operation_fields(
            rq, status, remaining, completed, failed, warning, has_identifier, error_comment, offending_element
        )
    )


def qr_unrecognized_response(rq: CFindRQ | CMoveRQ | CGetRQ) -> UnknownCommand:
    """The 0x0211 answer to a Q/R request on an association that does not serve Q/R.

    Before issue 16 these requests decoded as :class:`UnknownCommand` and
    were answered 0x0211 (HARDENING D21); this keeps that answer available
    to an SCP that has no Q/R handler for the request.

    :param rq: the request.
    :returns: the response (Command Field with bit 15 set, no data set).
    """
    command_field = {
        CFindRQ: CommandField.C_FIND_RQ,
        CMoveRQ: CommandField.C_MOVE_RQ,
        CGetRQ: CommandField.C_GET_RQ,
    }[type(rq)]
    elements: dict[int, bytes] = {Tag.STATUS: _enc_us(Status.UNRECOGNIZED_OPERATION)}
    if rq.affected_sop_class_uid:
        try:
            elements[Tag.AFFECTED_SOP_CLASS_UID] = _enc_ui(rq.affected_sop_class_uid)
        except ValueError:
            pass  # a hostile class UID (not ASCII, too long) is not echoed
    return UnknownCommand(command_field | 0x8000, rq.message_id, elements, has_dataset=False)
