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

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Union

from gateway.ul.items import UserInformation

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
        significant unless ``result`` is acceptance. ``None`` encodes as an
        empty transfer syntax sub-item... see the codec for the exact bytes.
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


def encode(pdu: PDU) -> bytes:
    """Encode one PDU, header included.

    :raises ValueError: if a field cannot be encoded (e.g. an AE title over 16 bytes).
    """
    raise NotImplementedError


def decode(pdu_type: int, body: bytes) -> PDU:
    """Decode the body of one PDU.

    :param pdu_type: the first byte of the PDU header.
    :param body: exactly the PDU-length bytes that follow the 6-byte header.
    :raises PDUDecodeError: on any malformed input, with the A-ABORT reason.
    """
    raise NotImplementedError
