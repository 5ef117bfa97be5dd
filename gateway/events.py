"""What the gateway observes, as typed events, and the one interface that receives them.

Adapters (:mod:`gateway.listen`, :mod:`gateway.forward`) and the service
(:mod:`gateway.service`) emit one frozen event per thing that happened to one
injected :class:`IGatewayObserver`; they never ask whether an observer is
there (the default is :data:`NULL_OBSERVER`) and never parse reason text: a
dead letter's kind travels as :class:`~gateway.queue.outcome.DeadLetterKind`.

The gateway's observer is a :class:`FanOutObserver` over the sinks that turn
events into metrics (:meth:`gateway.observe.GatewayMetrics.observe`), audit
records (:class:`gateway.security.AuditObserver`) and a debug log line each
(:class:`LogObserver`). The info, warning and error lines stay with the code
that emits the events, where the association id and the entry's fields are
at hand, so they read as they always have.

This module is a leaf: it imports nothing of the network, the queue store or
the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from twisted.logger import Logger

if TYPE_CHECKING:
    from gateway.queue.interfaces import Entry
    from gateway.queue.outcome import DeadLetterKind

__all__ = [
    "Event",
    "IGatewayObserver",
    "NullObserver",
    "NULL_OBSERVER",
    "FanOutObserver",
    "LogObserver",
    "AssociationAccepted",
    "AssociationRejected",
    "AssociationEnded",
    "UserAuthenticated",
    "ArtimExpired",
    "PduProtocolError",
    "DimseProtocolError",
    "TLSHandshakeFailed",
    "ProxyRefused",
    "DrainChanged",
    "InstanceStored",
    "InstanceAdmitted",
    "Delivered",
    "Redelivered",
    "Retried",
    "DeadLettered",
    "DestinationFault",
    "CircuitOpened",
    "CircuitClosed",
    "LeaseLost",
    "CircuitAdopted",
    "ConfigReloaded",
    "CommitmentRequested",
    "CommitmentReportSent",
    "CommitmentReportFailed",
    "ArchiveCommitmentRequested",
    "ArchiveCommitmentReported",
    "QueryAnswered",
    "QuerySourceAnswered",
    "RetrieveAnswered",
    "RetrieveJournalCleaned",
    # issue 18 (notify)
    "StudyCompleted",
]


# -- associations (gateway.listen) -------------------------------------------------------


@dataclass(frozen=True)
class AssociationAccepted:
    """A-ASSOCIATE-AC sent (PS3.8 7.1.1.1).

    :ivar calling_ae_title: as received (unprintable characters included; each sink makes it safe).
    """

    listener: str
    calling_ae_title: str
    called_ae_title: str
    peer: str
    certificate_subject: str = ""
    username: str = ""


@dataclass(frozen=True)
class AssociationRejected:
    """A-ASSOCIATE-RJ sent (access policy, user identity, ACSE rules, spool space or association limit).

    :ivar label: the bounded ``reason`` label of ``associations_rejected_total``
        (:data:`gateway.observe.REJECT_REASONS`, HARDENING P16).
    :ivar reason: the human-readable why, for the audit record.
    :ivar rejection: the RJ's (result, source, reason) values (PS3.8 Table 9-21).
    :ivar peer: the peer's address; empty when the service provider refused
        before the association was bound to a connection.
    """

    listener: str
    calling_ae_title: str
    called_ae_title: str
    peer: str
    label: str
    reason: str
    rejection: tuple[int, int, int]
    certificate_subject: str = ""


@dataclass(frozen=True)
class AssociationEnded:
    """An accepted association ended; ``released`` for an orderly A-RELEASE, false for an abort or a lost connection."""

    listener: str
    calling_ae_title: str
    released: bool


@dataclass(frozen=True)
class UserAuthenticated:
    """The outcome of a User Identity negotiation (PS3.7 D.3.3.7), success or not (HARDENING decision 7)."""

    listener: str
    peer: str
    calling_ae_title: str
    username: str
    identity_type: int
    success: bool
    description: str


@dataclass(frozen=True)
class ArtimExpired:
    """ARTIM fired before any A-ASSOCIATE-RQ arrived (PS3.8 9.1.5)."""

    listener: str


@dataclass(frozen=True)
class PduProtocolError:
    """We aborted a connection for a PDU we could not accept; ``reason`` is the A-ABORT reason (PS3.8 Table 9-26)."""

    listener: str
    reason: int


@dataclass(frozen=True)
class DimseProtocolError:
    """An association was aborted for a DIMSE protocol violation."""

    listener: str


@dataclass(frozen=True)
class TLSHandshakeFailed:
    """A TLS handshake failed at a listener; ``reason`` is a label of :func:`gateway.tls.classify_handshake_failure`."""

    listener: str
    peer: str
    reason: str
    detail: str


@dataclass(frozen=True)
class ProxyRefused:
    """A connection to a ``proxy_protocol`` listener was closed before its PROXY header was accepted.

    :ivar peer: the connection's real ``host:port`` (the proxy, or whoever connected).
    :ivar reason: a label of :data:`gateway.proxyproto.REFUSAL_REASONS`
        (``untrusted``, ``missing``, ``malformed``, ``timeout``).
    :ivar detail: why, in words.
    """

    listener: str
    peer: str
    reason: str
    detail: str


# -- instances (gateway.receive, gateway.intake) -----------------------------------------


@dataclass(frozen=True)
class InstanceStored:
    """One C-STORE answered; ``report`` is its :class:`~gateway.receive.InstanceReport`."""

    report: Any


@dataclass(frozen=True)
class InstanceAdmitted:
    """The intake's answer for one spooled instance, once journaled (before the C-STORE response).

    :ivar admission: the :class:`~gateway.intake.Admission`.
    :ivar spooled: the :class:`~gateway.spool.SpooledInstance`.
    :ivar info: the :class:`~gateway.receive.AssociationInfo`.
    """

    admission: Any
    spooled: Any
    info: Any


# -- forwarding (gateway.forward) --------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """An entry reached its destination; ``warning`` is empty on plain success."""

    entry: "Entry"
    duration: float
    warning: str


@dataclass(frozen=True)
class Redelivered:
    """An entry delivered after an ambiguous attempt: the destination may hold two copies (HARDENING F06)."""

    entry: "Entry"


@dataclass(frozen=True)
class Retried:
    """An entry's attempt failed and it will be tried again; ``reason`` is the text the journal keeps."""

    entry: "Entry"
    reason: str


@dataclass(frozen=True)
class DeadLettered:
    """An entry went to the dead letters.

    :ivar kind: why, as data (the ``reason`` label of ``dead_lettered_total``).
    :ivar detail: the text the journal keeps with it.
    """

    entry: "Entry"
    kind: "DeadLetterKind"
    detail: str


@dataclass(frozen=True)
class DestinationFault:
    """One destination-wide fault (connection refused, association rejected, TLS failure, ...), circuit open or not."""

    destination: str
    reason: str
    permanent: bool
    #: The TLS failure's label when the fault is one (``expired``, ``unknown_ca``, ...), else ``None``.
    tls_failure: str | None = None


@dataclass(frozen=True)
class CircuitOpened:
    """The circuit of a destination opened: it is down as a whole."""

    destination: str
    reason: str
    permanent: bool


@dataclass(frozen=True)
class CircuitClosed:
    """A probe succeeded: the circuit of a destination closed again."""

    destination: str


@dataclass(frozen=True)
class LeaseLost:
    """Another node took an entry over after this node's lease of it expired (issue 14).

    The fenced write (or the lease's renewal) found the entry no longer
    LEASED under this node's generation: this node's outcome for it is
    dropped, the other node's stands.

    :ivar node: this node (the one that lost the lease).
    """

    destination: str
    entry_id: int
    node: str


@dataclass(frozen=True)
class CircuitAdopted:
    """A destination's circuit followed another node's record in the queue store (issue 14).

    :ivar circuit_open: opened (``True``, the slots stop and this node probes too) or closed.
    :ivar reason: the other node's fault when opened, else empty.
    """

    destination: str
    circuit_open: bool
    reason: str


# -- Storage Commitment (gateway.commitment, issue 15) ------------------------------------


@dataclass(frozen=True)
class CommitmentRequested:
    """An N-ACTION-RQ (Storage Commitment request) was answered on ``listener``.

    :ivar outcome: ``accepted`` (journaled, a report is owed), ``repeated``
        (same Transaction UID and references: idempotent), ``refused`` (the
        requester may not ask: 0x0124), ``invalid`` (malformed: the failure
        status), ``conflict`` (the UID is on record with other references),
        ``unavailable`` (the journal could not be written).
    :ivar status: the N-ACTION-RSP status sent.
    :ivar instances: how many instances it asked about.
    """

    listener: str
    calling_ae_title: str
    peer: str
    transaction_uid: str
    outcome: str
    status: int
    instances: int = 0
    reason: str = ""


@dataclass(frozen=True)
class CommitmentReportSent:
    """A report was delivered: the requester answered the N-EVENT-REPORT-RQ with success.

    :ivar modality: the requester's name in the ``modalities`` table.
    :ivar event_type: 1 (all committed) or 2 (failures exist).
    :ivar latency_seconds: from the N-ACTION to the acknowledged report.
    :ivar attempts: delivery attempts it took (1 when the first one worked).
    """

    transaction_uid: str
    modality: str
    calling_ae_title: str
    policy: str
    event_type: int
    committed: int
    failed: int
    latency_seconds: float
    attempts: int


@dataclass(frozen=True)
class CommitmentReportFailed:
    """A report delivery attempt failed; it will be tried again at ``retry_in`` seconds (or given up: ``dead``)."""

    transaction_uid: str
    modality: str
    error: str
    attempt: int
    retry_in: float
    dead: bool = False


@dataclass(frozen=True)
class ArchiveCommitmentRequested:
    """The gateway asked a ``storage_commitment`` destination (N-ACTION as SCU) about delivered copies."""

    destination: str
    transaction_uid: str
    instances: int
    status: int


@dataclass(frozen=True)
class ArchiveCommitmentReported:
    """A ``storage_commitment`` destination reported (inbound N-EVENT-REPORT-RQ) on a request of ours.

    :ivar destination: ``""`` when the Transaction UID is unknown (answered with a failure status).
    :ivar status: the N-EVENT-REPORT-RSP status sent.
    """

    destination: str
    calling_ae_title: str
    transaction_uid: str
    committed: int
    failed: int
    status: int


# -- Query/Retrieve (gateway.qr, issue 16) ------------------------------------------------

#: ``QueryAnswered.outcome`` values: ``success`` (every source answered),
#: ``partial`` (non-strict: a source failed or was slow and was left out),
#: ``cancelled`` (C-CANCEL, final 0xFE00), ``limited`` (``max_results``
#: reached: sources cancelled, final 0xA700), ``refused`` (access: the
#: requester may not query), ``invalid`` (malformed identifier: 0xC000-class),
#: ``failed`` (strict and a source failed, or no source answered).
QUERY_OUTCOMES: tuple[str, ...] = ("success", "partial", "cancelled", "limited", "refused", "invalid", "failed")

#: ``RetrieveAnswered.outcome`` values: ``success`` (every sub-operation
#: completed), ``warning`` (some failed or warned: final 0xB000), ``failed``
#: (none completed), ``cancelled``, ``refused`` (access or an unknown or
#: disallowed move destination: 0xA801), ``invalid`` (malformed identifier).
RETRIEVE_OUTCOMES: tuple[str, ...] = ("success", "warning", "failed", "cancelled", "refused", "invalid")


@dataclass(frozen=True)
class QueryAnswered:
    """A C-FIND request was answered: its final response was sent on ``listener`` (PS3.4 C.4.1).

    Audited as a Query (PS3.15 A.5.3.10) with its keys; counted by outcome.

    :ivar sop_class_uid: the FIND SOP class (Patient or Study Root).
    :ivar level: the Query/Retrieve Level (0008,0052) asked, ``""`` if absent.
    :ivar identifier: the query identifier as received (its keys; PHI: it
        goes to the audit trail only, never to a log line or a metric label).
    :ivar transfer_syntax: the syntax ``identifier`` is encoded in.
    :ivar outcome: one of :data:`QUERY_OUTCOMES`.
    :ivar status: the final C-FIND-RSP status sent.
    :ivar results: pending responses relayed (after duplicate removal).
    :ivar failed_sources: the sources left out (or that failed a strict query).
    :ivar duration_seconds: from the request to the final response.
    :ivar reason: why it was refused or failed, in words (no peer data).
    """

    listener: str
    calling_ae_title: str
    peer: str
    sop_class_uid: str
    level: str
    identifier: bytes
    transfer_syntax: str
    outcome: str
    status: int
    results: int
    failed_sources: tuple[str, ...] = ()
    duration_seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class QuerySourceAnswered:
    """One source's part of a C-FIND (or a retrieve's locating C-FIND) ended.

    :ivar destination: the source, a DICOM destination name.
    :ivar ok: it answered (success or cancel on our request); ``False``: it
        failed, refused, timed out or could not be reached, and was left out.
    :ivar results: pending responses it returned (before duplicate removal).
    :ivar latency_seconds: from the association request to its final response (or the failure).
    :ivar reason: the failure, in words (``timeout``, ``ConnectionRefusedError: ...``, ``status 0xA700``).
    """

    destination: str
    ok: bool
    results: int
    latency_seconds: float
    reason: str = ""


@dataclass(frozen=True)
class RetrieveAnswered:
    """A C-MOVE or C-GET request ended: its final response was sent on ``listener`` (PS3.4 C.4.2, C.4.3).

    Audited as DICOM Instances Transferred (PS3.15 A.5.3.7) or, when
    ``refused``, a Security Alert; counted by outcome and sub-operation result.

    :ivar verb: ``move`` or ``get``.
    :ivar destination: the move destination's ``modalities`` name (C-MOVE;
        ``""`` when unknown or for C-GET, whose destination is the requester).
    :ivar move_destination: the Move Destination AE title asked for (C-MOVE), as received.
    :ivar mode: ``relay`` or ``pass_through`` (C-GET: ``relay``).
    :ivar sources: the sources it retrieved from.
    :ivar study_uids: the studies concerned, as far as known (for the audit's participant objects).
    :ivar failed_uids: the Failed SOP Instance UID List (0008,0058) sent.
    """

    listener: str
    calling_ae_title: str
    peer: str
    verb: str
    sop_class_uid: str
    level: str
    outcome: str
    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    destination: str = ""
    move_destination: str = ""
    mode: str = "relay"
    sources: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    failed_uids: tuple[str, ...] = ()
    duration_seconds: float = 0.0
    reason: str = ""


# -- process (gateway.service) -----------------------------------------------------------


@dataclass(frozen=True)
class DicomWebAnswered:
    """A STOW-RS request to a DICOMweb destination ended (issue 17): the HTTP status, or 0 without an answer."""

    destination: str
    code: int
    instances: int
    bytes_sent: int
    seconds: float


@dataclass(frozen=True)
class DrainChanged:
    """The node started draining (``draining``) or stopped (``dicom-gateway drain`` / ``undrain``, :mod:`gateway.drain`)."""

    draining: bool


@dataclass(frozen=True)
class ConfigReloaded:
    """A reload (SIGHUP or API) was applied, or refused."""

    applied: bool


@dataclass(frozen=True)
class RetrieveJournalCleaned:
    """The housekeeping deleted finished retrieves, their items and unused remapped UIDs past retention (issue 16).

    Emitted once per round that deleted something (:meth:`gateway.recovery.Recovery.clean_retrieves`).
    """

    retrieves: int
    items: int
    remapped_uids: int


# issue 18 (notify)
@dataclass(frozen=True)
class StudyCompleted:
    """The tracker recorded a study complete at a route's destinations and queued its notifications (issue 18).

    No UID or patient data: the route and sinks are configuration names.

    :ivar event: ``complete``, ``amended``, or ``closed`` (a route that no longer notifies closed its row).
    :ivar sinks: the sinks a notification was queued for.
    :ivar seconds: from the study's first instance (of this opening) to the completion.
    """

    route: str
    event: str
    forced: bool
    with_failures: bool
    sinks: tuple[str, ...]
    seconds: float


Event = (
    AssociationAccepted
    | AssociationRejected
    | AssociationEnded
    | UserAuthenticated
    | ArtimExpired
    | PduProtocolError
    | DimseProtocolError
    | TLSHandshakeFailed
    | ProxyRefused
    | DrainChanged
    | InstanceStored
    | InstanceAdmitted
    | Delivered
    | Redelivered
    | Retried
    | DeadLettered
    | DestinationFault
    | CircuitOpened
    | CircuitClosed
    | LeaseLost
    | CircuitAdopted
    | ConfigReloaded
    | CommitmentRequested
    | CommitmentReportSent
    | CommitmentReportFailed
    | ArchiveCommitmentRequested
    | ArchiveCommitmentReported
    | QueryAnswered
    | QuerySourceAnswered
    | RetrieveAnswered
    | DicomWebAnswered
    | RetrieveJournalCleaned
    | StudyCompleted  # issue 18 (notify)
)


@runtime_checkable
class IGatewayObserver(Protocol):
    """Receives every event the gateway emits; each sink ignores the events it has no use for."""

    def observe(self, event: Event) -> None:
        """One thing happened."""


class NullObserver:
    """The default observer: every event is dropped."""

    def observe(self, event: Event) -> None:
        """Drop ``event``."""


#: The observer of an adapter nobody observes.
NULL_OBSERVER = NullObserver()


class FanOutObserver:
    """Passes each event to every sink, in order (metrics, then audit).

    :param sinks: the observers to tell.
    """

    def __init__(self, *sinks: IGatewayObserver) -> None:
        self.sinks = tuple(sinks)

    def observe(self, event: Event) -> None:
        """Tell every sink."""
        for sink in self.sinks:
            sink.observe(event)


class LogObserver:
    """The log sink: one ``debug`` line per event, naming its kind and what it is about.

    Only names the configuration gave (listener, destination) and the
    entry's journal id are logged: nothing a peer supplied (AE titles,
    reasons) and nothing of the instance (HARDENING H09, P10), so the line
    needs no escaping. At the default ``info`` level nothing is written.

    :param log: where the lines go (``gateway.events`` by default).
    """

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log or Logger(namespace="gateway.events")

    def observe(self, event: Event) -> None:
        """Log ``event`` at debug level."""
        self.log.debug("event {event_type}{subject}", event_type=type(event).__name__, subject=describe(event))


def describe(event: Event) -> str:
    """What an event is about, as safe text: `` listener l1``, `` destination pacs entry 7``, or empty.

    :param event: the event.
    :returns: the text, with a leading space when not empty.
    """
    listener = getattr(event, "listener", None)
    if isinstance(listener, str):
        return f" listener {listener}"
    entry = getattr(event, "entry", None)
    if entry is not None:
        return f" destination {entry.destination} entry {entry.entry_id}"
    destination = getattr(event, "destination", None)
    if isinstance(destination, str):
        return f" destination {destination}"
    return ""
