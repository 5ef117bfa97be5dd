"""Errors and the code tables of the upper layer (PS3.8 9.3).

Two kinds of error exist, as in h11 and h2: a :class:`LocalProtocolError` is a
bug in the caller (a primitive issued in a state where the standard does not
allow it), while a :class:`PDUDecodeError` describes bytes a peer sent. The
latter carries the A-ABORT reason that the state machine answers with.
"""

from __future__ import annotations

from enum import IntEnum


class AbortSource(IntEnum):
    """A-ABORT source field (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT reason/diag. field when the source is the provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    RESERVED = 3
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ result field (PS3.8 Table 9-21)."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ source field (PS3.8 Table 9-21)."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReasonUser(IntEnum):
    """A-ASSOCIATE-RJ reason when the source is the service-user (PS3.8 Table 9-21)."""

    NO_REASON = 1
    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 2
    CALLING_AE_TITLE_NOT_RECOGNIZED = 3
    CALLED_AE_TITLE_NOT_RECOGNIZED = 7


class RejectReasonACSE(IntEnum):
    """A-ASSOCIATE-RJ reason when the source is the provider's ACSE part (PS3.8 Table 9-21)."""

    NO_REASON = 1
    PROTOCOL_VERSION_NOT_SUPPORTED = 2


class RejectReasonPresentation(IntEnum):
    """A-ASSOCIATE-RJ reason when the source is the provider's presentation part (PS3.8 Table 9-21)."""

    TEMPORARY_CONGESTION = 1
    LOCAL_LIMIT_EXCEEDED = 2


class ProtocolError(Exception):
    """Base class of every upper-layer protocol error."""


class LocalProtocolError(ProtocolError):
    """The local user did something the state machine does not allow (a caller bug)."""


class PDUDecodeError(ProtocolError):
    """A peer sent bytes that are not a valid PDU.

    :param reason: the A-ABORT reason to answer with (PS3.8 Table 9-26).
    :param message: a human-readable description for logs.
    """

    def __init__(self, reason: AbortReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"PDUDecodeError({self.reason.name}, {self.message!r})"
