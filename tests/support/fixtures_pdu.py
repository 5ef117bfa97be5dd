"""Annotated PDU byte fixtures (PS3.8 9.3), one commented line per field.

The association exchange below (``ECHOSCU_*`` and ``STORESCP_*``) was captured
on loopback between DCMTK 3.6.7 ``echoscu -aet ECHOSCU -aec STORESCP`` and
``storescp -aet STORESCP``: these are the exact bytes a real peer sends,
including a non-zero reserved byte (DCMTK writes 0xFF in the third byte of a
presentation context item, which PS3.8 says must not be tested on receipt).

The others are written by hand from PS3.8 and PS3.7 D.3.3 and cross-checked
against pynetdicom's decoder in ``tests.unit.ul.test_pdu``.
"""

from __future__ import annotations

from gateway.ul.items import (
    SCPSCURoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from gateway.ul.pdu import (
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
)

#: Verification SOP class (PS3.4 A.4) and Implicit VR Little Endian (PS3.5 10.1).
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DCMTK_CLASS_UID = "1.2.276.0.7230010.3.0.3.6.7"

# --- captured from DCMTK 3.6.7 -------------------------------------------------

#: A-ASSOCIATE-RQ sent by ``echoscu`` (PS3.8 9.3.2).
ECHOSCU_A_ASSOCIATE_RQ = (
    b"\x01"  # PDU type: A-ASSOCIATE-RQ
    b"\x00"  # reserved
    b"\x00\x00\x00\xcd"  # PDU length: 205
    b"\x00\x01"  # protocol version: bit 0 set (version 1)
    b"\x00\x00"  # reserved
    b"STORESCP        "  # called AE title, 16 bytes space padded
    b"ECHOSCU         "  # calling AE title, 16 bytes space padded
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # reserved (bytes 1-16 of 32)
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # reserved (bytes 17-32 of 32)
    # -- application context item (PS3.8 9.3.2.1)
    b"\x10"  # item type: application context
    b"\x00"  # reserved
    b"\x00\x15"  # item length: 21
    b"1.2.840.10008.3.1.1.1"  # DICOM application context name (not padded)
    # -- presentation context item (PS3.8 9.3.2.2)
    b"\x20"  # item type: presentation context (RQ)
    b"\x00"  # reserved
    b"\x00\x2e"  # item length: 46
    b"\x01"  # presentation context ID: 1
    b"\x00"  # reserved
    b"\xff"  # reserved: DCMTK sends 0xFF here; must not be tested
    b"\x00"  # reserved
    b"\x30"  # sub-item type: abstract syntax (PS3.8 9.3.2.2.1)
    b"\x00"  # reserved
    b"\x00\x11"  # sub-item length: 17
    b"1.2.840.10008.1.1"  # Verification SOP class
    b"\x40"  # sub-item type: transfer syntax (PS3.8 9.3.2.2.2)
    b"\x00"  # reserved
    b"\x00\x11"  # sub-item length: 17
    b"1.2.840.10008.1.2"  # Implicit VR Little Endian
    # -- user information item (PS3.8 9.3.2.3)
    b"\x50"  # item type: user information
    b"\x00"  # reserved
    b"\x00\x3a"  # item length: 58
    b"\x51"  # sub-item type: maximum length (PS3.8 D.1)
    b"\x00"  # reserved
    b"\x00\x04"  # sub-item length: 4
    b"\x00\x00\x40\x00"  # maximum length received: 16384
    b"\x52"  # sub-item type: implementation class UID (PS3.7 D.3.3.2)
    b"\x00"  # reserved
    b"\x00\x1b"  # sub-item length: 27
    b"1.2.276.0.7230010.3.0.3.6.7"  # DCMTK 3.6.7 implementation class UID
    b"\x55"  # sub-item type: implementation version name (PS3.7 D.3.3.2)
    b"\x00"  # reserved
    b"\x00\x0f"  # sub-item length: 15
    b"OFFIS_DCMTK_367"  # implementation version name
)

#: The decoded form of :data:`ECHOSCU_A_ASSOCIATE_RQ`.
ECHOSCU_A_ASSOCIATE_RQ_PDU = AAssociateRQ(
    called_ae_title="STORESCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LE,)),),
    user_information=UserInformation(
        max_length=16384,
        implementation_class_uid=DCMTK_CLASS_UID,
        implementation_version_name="OFFIS_DCMTK_367",
    ),
)

#: Offset of the reserved byte DCMTK sets to 0xFF (6-byte header + 68 fixed +
#: 25 application context + 4 item header + 2 bytes into the context).
ECHOSCU_RESERVED_FF_OFFSET = 6 + 68 + 25 + 4 + 2

#: A-ASSOCIATE-AC answered by ``storescp`` (PS3.8 9.3.3).
STORESCP_A_ASSOCIATE_AC = (
    b"\x02"  # PDU type: A-ASSOCIATE-AC
    b"\x00"  # reserved
    b"\x00\x00\x00\xb8"  # PDU length: 184
    b"\x00\x01"  # protocol version: 1
    b"\x00\x00"  # reserved
    b"STORESCP        "  # called AE title, echoed (not tested on receipt)
    b"ECHOSCU         "  # calling AE title, echoed
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # reserved (bytes 1-16 of 32)
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # reserved (bytes 17-32 of 32)
    # -- application context item (PS3.8 9.3.3.1)
    b"\x10"  # item type: application context
    b"\x00"  # reserved
    b"\x00\x15"  # item length: 21
    b"1.2.840.10008.3.1.1.1"  # DICOM application context name
    # -- presentation context item (PS3.8 9.3.3.2)
    b"\x21"  # item type: presentation context (AC)
    b"\x00"  # reserved
    b"\x00\x19"  # item length: 25
    b"\x01"  # presentation context ID: 1
    b"\x00"  # reserved
    b"\x00"  # result/reason: 0 acceptance
    b"\x00"  # reserved
    b"\x40"  # sub-item type: transfer syntax
    b"\x00"  # reserved
    b"\x00\x11"  # sub-item length: 17
    b"1.2.840.10008.1.2"  # Implicit VR Little Endian
    # -- user information item (PS3.8 9.3.3.3)
    b"\x50"  # item type: user information
    b"\x00"  # reserved
    b"\x00\x3a"  # item length: 58
    b"\x51"  # sub-item type: maximum length
    b"\x00"  # reserved
    b"\x00\x04"  # sub-item length: 4
    b"\x00\x00\x40\x00"  # maximum length received: 16384
    b"\x52"  # sub-item type: implementation class UID
    b"\x00"  # reserved
    b"\x00\x1b"  # sub-item length: 27
    b"1.2.276.0.7230010.3.0.3.6.7"  # implementation class UID
    b"\x55"  # sub-item type: implementation version name
    b"\x00"  # reserved
    b"\x00\x0f"  # sub-item length: 15
    b"OFFIS_DCMTK_367"  # implementation version name
)

#: The decoded form of :data:`STORESCP_A_ASSOCIATE_AC`.
STORESCP_A_ASSOCIATE_AC_PDU = AAssociateAC(
    called_ae_title="STORESCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(PresentationContextAC(1, 0, IMPLICIT_VR_LE),),
    user_information=UserInformation(
        max_length=16384,
        implementation_class_uid=DCMTK_CLASS_UID,
        implementation_version_name="OFFIS_DCMTK_367",
    ),
)

#: The C-ECHO-RQ command set inside :data:`ECHOSCU_P_DATA_TF` (PS3.7 9.3.5,
#: Implicit VR Little Endian: tag, 4-byte length, value).
ECHO_RQ_COMMAND = (
    b"\x00\x00\x00\x00\x04\x00\x00\x00\x38\x00\x00\x00"  # (0000,0000) CommandGroupLength = 56
    b"\x00\x00\x02\x00\x12\x00\x00\x00"  # (0000,0002) AffectedSOPClassUID, 18 bytes
    b"1.2.840.10008.1.1\x00"  # Verification, NUL padded to even length
    b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00"  # (0000,0100) CommandField = 0x0030 C-ECHO-RQ
    b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00"  # (0000,0110) MessageID = 1
    b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"  # (0000,0800) CommandDataSetType = 0x0101 (none)
)

#: P-DATA-TF carrying the C-ECHO-RQ, sent by ``echoscu`` (PS3.8 9.3.5).
ECHOSCU_P_DATA_TF = (
    b"\x04"  # PDU type: P-DATA-TF
    b"\x00"  # reserved
    b"\x00\x00\x00\x4a"  # PDU length: 74
    b"\x00\x00\x00\x46"  # PDV item length: 70 (context ID + control + 68 data)
    b"\x01"  # presentation context ID: 1
    b"\x03"  # message control header: command (bit 0), last fragment (bit 1)
    + ECHO_RQ_COMMAND  # 68 bytes of command set
)

#: The decoded form of :data:`ECHOSCU_P_DATA_TF`.
ECHOSCU_P_DATA_TF_PDU = PDataTF(pdvs=(PDV(context_id=1, control=0x03, data=ECHO_RQ_COMMAND),))

#: P-DATA-TF carrying the C-ECHO-RSP, sent by ``storescp``.
STORESCP_P_DATA_TF = (
    b"\x04"  # PDU type: P-DATA-TF
    b"\x00"  # reserved
    b"\x00\x00\x00\x54"  # PDU length: 84
    b"\x00\x00\x00\x50"  # PDV item length: 80
    b"\x01"  # presentation context ID: 1
    b"\x03"  # message control header: command, last fragment
    b"\x00\x00\x00\x00\x04\x00\x00\x00\x42\x00\x00\x00"  # (0000,0000) CommandGroupLength = 66
    b"\x00\x00\x02\x00\x12\x00\x00\x00"  # (0000,0002) AffectedSOPClassUID, 18 bytes
    b"1.2.840.10008.1.1\x00"  # Verification
    b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x80"  # (0000,0100) CommandField = 0x8030 C-ECHO-RSP
    b"\x00\x00\x20\x01\x02\x00\x00\x00\x01\x00"  # (0000,0120) MessageIDBeingRespondedTo = 1
    b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"  # (0000,0800) CommandDataSetType = 0x0101
    b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"  # (0000,0900) Status = 0x0000 success
)

#: A-RELEASE-RQ sent by ``echoscu`` (PS3.8 9.3.6).
A_RELEASE_RQ = (
    b"\x05"  # PDU type: A-RELEASE-RQ
    b"\x00"  # reserved
    b"\x00\x00\x00\x04"  # PDU length: 4
    b"\x00\x00\x00\x00"  # reserved
)

#: A-RELEASE-RP sent by ``storescp`` (PS3.8 9.3.7).
A_RELEASE_RP = (
    b"\x06"  # PDU type: A-RELEASE-RP
    b"\x00"  # reserved
    b"\x00\x00\x00\x04"  # PDU length: 4
    b"\x00\x00\x00\x00"  # reserved
)

#: The whole captured echo exchange, requestor and acceptor PDUs interleaved.
ECHO_EXCHANGE = (
    ECHOSCU_A_ASSOCIATE_RQ,
    STORESCP_A_ASSOCIATE_AC,
    ECHOSCU_P_DATA_TF,
    STORESCP_P_DATA_TF,
    A_RELEASE_RQ,
    A_RELEASE_RP,
)

# --- written by hand -----------------------------------------------------------

#: A-ASSOCIATE-RJ: permanent, service-user, called AE title not recognised (PS3.8 9.3.4).
A_ASSOCIATE_RJ = (
    b"\x03"  # PDU type: A-ASSOCIATE-RJ
    b"\x00"  # reserved
    b"\x00\x00\x00\x04"  # PDU length: 4
    b"\x00"  # reserved
    b"\x01"  # result: 1 rejected-permanent
    b"\x01"  # source: 1 DICOM UL service-user
    b"\x07"  # reason: 7 called-AE-title-not-recognized
)

#: The decoded form of :data:`A_ASSOCIATE_RJ`.
A_ASSOCIATE_RJ_PDU = AAssociateRJ(result=1, source=1, reason=7)

#: A-ABORT from the service provider, invalid PDU parameter value (PS3.8 9.3.8).
A_ABORT = (
    b"\x07"  # PDU type: A-ABORT
    b"\x00"  # reserved
    b"\x00\x00\x00\x04"  # PDU length: 4
    b"\x00"  # reserved
    b"\x00"  # reserved
    b"\x02"  # source: 2 DICOM UL service-provider
    b"\x06"  # reason/diag.: 6 invalid-PDU-parameter-value
)

#: The decoded form of :data:`A_ABORT`.
A_ABORT_PDU = AAbort(source=2, reason=6)

#: A-ASSOCIATE-AC with one accepted and one rejected context; the rejected one
#: has an empty transfer syntax sub-item, as DCMTK writes (PS3.8 9.3.3.2).
A_ASSOCIATE_AC_REJECTED_CONTEXT = (
    b"\x02"  # PDU type: A-ASSOCIATE-AC
    b"\x00"  # reserved
    b"\x00\x00\x00\x88"  # PDU length: 136
    b"\x00\x01"  # protocol version: 1
    b"\x00\x00"  # reserved
    b"GATEWAY         "  # called AE title
    b"CT01            "  # calling AE title
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # reserved (bytes 1-16 of 32)
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # reserved (bytes 17-32 of 32)
    b"\x10"  # item type: application context
    b"\x00"  # reserved
    b"\x00\x15"  # item length: 21
    b"1.2.840.10008.3.1.1.1"  # DICOM application context name
    b"\x21"  # item type: presentation context (AC)
    b"\x00"  # reserved
    b"\x00\x1b"  # item length: 27
    b"\x01"  # presentation context ID: 1
    b"\x00"  # reserved
    b"\x00"  # result: 0 acceptance
    b"\x00"  # reserved
    b"\x40"  # sub-item type: transfer syntax
    b"\x00"  # reserved
    b"\x00\x13"  # sub-item length: 19
    b"1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    b"\x21"  # item type: presentation context (AC)
    b"\x00"  # reserved
    b"\x00\x08"  # item length: 8
    b"\x03"  # presentation context ID: 3
    b"\x00"  # reserved
    b"\x03"  # result: 3 abstract-syntax-not-supported
    b"\x00"  # reserved
    b"\x40"  # sub-item type: transfer syntax
    b"\x00"  # reserved
    b"\x00\x00"  # sub-item length: 0 (not significant when rejected)
)

#: The decoded form of :data:`A_ASSOCIATE_AC_REJECTED_CONTEXT`.
A_ASSOCIATE_AC_REJECTED_CONTEXT_PDU = AAssociateAC(
    called_ae_title="GATEWAY",
    calling_ae_title="CT01",
    presentation_contexts=(
        PresentationContextAC(1, 0, EXPLICIT_VR_LE),
        PresentationContextAC(3, 3, None),
    ),
    user_information=None,
)

#: The content of a user information item using every sub-item this codec
#: knows (PS3.8 Annex D, PS3.7 D.3.3), in the order the encoder writes them,
#: plus one unknown sub-item.  Wrap it with :func:`user_information_item`.
FULL_USER_INFORMATION_CONTENT = (
    b"\x51"  # sub-item type: maximum length (PS3.8 D.1)
    b"\x00"  # reserved
    b"\x00\x04"  # sub-item length: 4
    b"\x00\x01\x00\x00"  # maximum length received: 65536
    b"\x52"  # sub-item type: implementation class UID (PS3.7 D.3.3.2)
    b"\x00"  # reserved
    b"\x00\x07"  # sub-item length: 7
    b"1.2.3.4"  # implementation class UID
    b"\x55"  # sub-item type: implementation version name (PS3.7 D.3.3.2)
    b"\x00"  # reserved
    b"\x00\x07"  # sub-item length: 7
    b"GATEWAY"  # implementation version name
    b"\x53"  # sub-item type: asynchronous operations window (PS3.7 D.3.3.3)
    b"\x00"  # reserved
    b"\x00\x04"  # sub-item length: 4
    b"\x00\x05"  # maximum number of operations invoked: 5
    b"\x00\x01"  # maximum number of operations performed: 1
    b"\x54"  # sub-item type: SCP/SCU role selection (PS3.7 D.3.3.4)
    b"\x00"  # reserved
    b"\x00\x1d"  # sub-item length: 29
    b"\x00\x19"  # SOP class UID length: 25
    b"1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    b"\x00"  # SCU role: 0 not supported
    b"\x01"  # SCP role: 1 supported
    b"\x56"  # sub-item type: SOP class extended negotiation (PS3.7 D.3.3.5)
    b"\x00"  # reserved
    b"\x00\x1e"  # sub-item length: 30
    b"\x00\x19"  # SOP class UID length: 25
    b"1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    b"\x02\x00\x03"  # service-class-application-information (opaque)
    b"\x57"  # sub-item type: SOP class common extended negotiation (PS3.7 D.3.3.6)
    b"\x00"  # sub-item version: 0
    b"\x00\x3d"  # sub-item length: 61
    b"\x00\x19"  # SOP class UID length: 25
    b"1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    b"\x00\x11"  # service class UID length: 17
    b"1.2.840.10008.4.2"  # Storage Service Class
    b"\x00\x0d"  # related general SOP class identification length: 13
    b"\x00\x0b"  # related general SOP class UID length: 11 (Table D.3-13)
    b"1.2.3.4.5.6"  # related general SOP class UID
    b"\x58"  # sub-item type: user identity RQ (PS3.7 D.3.3.7.1)
    b"\x00"  # reserved
    b"\x00\x10"  # sub-item length: 16
    b"\x02"  # user identity type: 2 username and passcode
    b"\x01"  # positive response requested: 1 yes
    b"\x00\x04"  # primary field length: 4
    b"user"  # primary field: username
    b"\x00\x06"  # secondary field length: 6
    b"s3cret"  # secondary field: passcode
    b"\x59"  # sub-item type: user identity AC (PS3.7 D.3.3.7.2)
    b"\x00"  # reserved
    b"\x00\x06"  # sub-item length: 6
    b"\x00\x04"  # server response length: 4
    b"tokn"  # server response
    b"\x5f"  # sub-item type: 0x5F, unknown (PS3.8 D.2: ignore)
    b"\x00"  # reserved
    b"\x00\x02"  # sub-item length: 2
    b"\xab\xcd"  # opaque content
)

#: The decoded form of :data:`FULL_USER_INFORMATION_CONTENT`.
FULL_USER_INFORMATION = UserInformation(
    max_length=65536,
    implementation_class_uid="1.2.3.4",
    implementation_version_name="GATEWAY",
    async_ops=(5, 1),
    role_selections=(SCPSCURoleSelection(CT_IMAGE_STORAGE, scu_role=False, scp_role=True),),
    extended_negotiations=(SOPClassExtendedNegotiation(CT_IMAGE_STORAGE, b"\x02\x00\x03"),),
    common_extended_negotiations=(
        SOPClassCommonExtendedNegotiation(CT_IMAGE_STORAGE, "1.2.840.10008.4.2", ("1.2.3.4.5.6",)),
    ),
    user_identity_rq=UserIdentityRQ(2, True, b"user", b"s3cret"),
    user_identity_ac=UserIdentityAC(b"tokn"),
    unknown_items=(UnknownItem(0x5F, b"\xab\xcd"),),
)


def user_information_item(content: bytes) -> bytes:
    """Wrap sub-items in a user information item header (PS3.8 9.3.2.3).

    :param content: the sub-items.
    :returns: the item: type 0x50, reserved, 2-byte length, content.
    """
    return b"\x50\x00" + len(content).to_bytes(2, "big") + content


def associate_rq_body(items: bytes, called: bytes = b"GATEWAY", calling: bytes = b"CT01") -> bytes:
    """Build an A-ASSOCIATE-RQ *body* (no 6-byte header) around raw items.

    Used by the malformed-input tests to wrap a broken item in a valid
    fixed part (PS3.8 Table 9-11).

    :param items: the variable items, verbatim.
    :param called: the called AE title, unpadded.
    :param calling: the calling AE title, unpadded.
    :returns: protocol version 1, reserved, both titles, 32 reserved, items.
    """
    return b"\x00\x01\x00\x00" + called.ljust(16, b" ") + calling.ljust(16, b" ") + bytes(32) + items


#: The application context item every RQ needs (PS3.8 9.3.2.1).
APPLICATION_CONTEXT_ITEM = b"\x10\x00\x00\x15" + b"1.2.840.10008.3.1.1.1"


def presentation_context_rq_item(context_id: int, abstract: bytes, *syntaxes: bytes) -> bytes:
    """Build a presentation context item 0x20 from raw UIDs (PS3.8 9.3.2.2).

    :param context_id: the ID byte (not checked, so tests can use bad ones).
    :param abstract: the abstract syntax UID bytes (may be empty).
    :param syntaxes: transfer syntax UID bytes.
    :returns: the item.
    """
    content = bytes((context_id, 0, 0, 0)) + b"\x30\x00" + len(abstract).to_bytes(2, "big") + abstract
    for syntax in syntaxes:
        content += b"\x40\x00" + len(syntax).to_bytes(2, "big") + syntax
    return b"\x20\x00" + len(content).to_bytes(2, "big") + content


#: Every well-formed fixture with its PDU type byte and decoded form.
ALL_FIXTURES: tuple[tuple[str, bytes, PDU], ...] = (
    ("echoscu A-ASSOCIATE-RQ", ECHOSCU_A_ASSOCIATE_RQ, ECHOSCU_A_ASSOCIATE_RQ_PDU),
    ("storescp A-ASSOCIATE-AC", STORESCP_A_ASSOCIATE_AC, STORESCP_A_ASSOCIATE_AC_PDU),
    ("echoscu P-DATA-TF", ECHOSCU_P_DATA_TF, ECHOSCU_P_DATA_TF_PDU),
    ("A-RELEASE-RQ", A_RELEASE_RQ, AReleaseRQ()),
    ("A-RELEASE-RP", A_RELEASE_RP, AReleaseRP()),
    ("A-ASSOCIATE-RJ", A_ASSOCIATE_RJ, A_ASSOCIATE_RJ_PDU),
    ("A-ABORT", A_ABORT, A_ABORT_PDU),
    ("AC with a rejected context", A_ASSOCIATE_AC_REJECTED_CONTEXT, A_ASSOCIATE_AC_REJECTED_CONTEXT_PDU),
)
