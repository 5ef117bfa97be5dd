"""What the upper-layer state machine asks its adapter to do, as frozen data.

:class:`~gateway.ul.association.Association` never touches a socket or a clock;
every method returns a list of these outputs, in the order they must be
carried out. The Twisted adapter (``gateway.listen``, ``gateway.associate``)
is the only code that interprets them: it writes ``Send.data`` to the
transport, arms or cancels the ARTIM timer, closes the connection, and hands
indications and confirmations to the DICOM service user (the DIMSE layer).

The names follow the primitives of PS3.8 section 7 (A-ASSOCIATE, A-RELEASE,
A-ABORT, A-P-ABORT, P-DATA) and the transport primitives of section 9.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from gateway.ul.pdu import PDV, AAssociateAC, AAssociateRJ, AAssociateRQ


@dataclass(frozen=True)
class Send:
    """Write these bytes (one or more whole PDUs) to the transport."""

    data: bytes


@dataclass(frozen=True)
class ConnectTransport:
    """AE-1: issue a TRANSPORT CONNECT request (requestor only, PS3.8 9.2.2)."""


@dataclass(frozen=True)
class CloseTransport:
    """Close the transport connection once pending writes are flushed."""


@dataclass(frozen=True)
class StartArtim:
    """Start (or restart) the ARTIM timer for ``seconds`` (PS3.8 9.1.5)."""

    seconds: float


@dataclass(frozen=True)
class StopArtim:
    """Stop the ARTIM timer if it is running (PS3.8 9.1.5)."""


@dataclass(frozen=True)
class AssociateIndication:
    """A-ASSOCIATE indication: a peer asks for an association (AE-6, acceptor).

    The service user answers with ``Association.accept`` or ``Association.reject``.
    """

    request: AAssociateRQ


@dataclass(frozen=True)
class AssociateAccepted:
    """A-ASSOCIATE confirmation (accept): the acceptor sent an AC (AE-3, requestor)."""

    response: AAssociateAC


@dataclass(frozen=True)
class AssociateRejected:
    """A-ASSOCIATE confirmation (reject): the acceptor sent an RJ (AE-4, requestor)."""

    response: AAssociateRJ


@dataclass(frozen=True)
class PDataIndication:
    """P-DATA indication: presentation data values arrived (DT-2, AR-6)."""

    pdvs: tuple[PDV, ...]


@dataclass(frozen=True)
class ReleaseIndication:
    """A-RELEASE indication: the peer asks to release (AR-2; AR-8 on a collision).

    :ivar collision: true when both sides asked at once (AR-8).
    """

    collision: bool = False


@dataclass(frozen=True)
class ReleaseConfirm:
    """A-RELEASE confirmation: the peer accepted our release request (AR-3, AR-10)."""


@dataclass(frozen=True)
class AbortIndication:
    """A-ABORT or A-P-ABORT indication: the association ended abnormally (AA-3, AA-4, AA-8).

    :ivar source: 0 service-user, 2 service-provider (PS3.8 Table 9-26);
        ``None`` when the transport closed with no A-ABORT PDU (AA-4).
    :ivar reason: the abort reason (PS3.8 Table 9-26), 0 when not applicable.
    :ivar local: true when *we* aborted because the peer broke the protocol (AA-8).
    :ivar detail: a human-readable explanation for logs.
    """

    source: int | None
    reason: int
    local: bool = False
    detail: str = ""


Output = Union[
    Send,
    ConnectTransport,
    CloseTransport,
    StartArtim,
    StopArtim,
    AssociateIndication,
    AssociateAccepted,
    AssociateRejected,
    PDataIndication,
    ReleaseIndication,
    ReleaseConfirm,
    AbortIndication,
]
