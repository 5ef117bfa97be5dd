"""The DICOM service user on the receiving side: Verification and Storage SCP.

One :class:`StorageService` serves one accepted association. The Twisted
acceptor (:mod:`gateway.listen`) hands it every P-DATA indication; it
reassembles DIMSE messages (:mod:`gateway.dimse.pdv`), answers C-ECHO,
streams each C-STORE data set into the :mod:`gateway.spool` as its
fragments arrive, and answers C-STORE-RSP only once the instance is durable
and journaled (its file's fdatasync, then the journal's commit; HARDENING
decision 10, issue 13). Memory therefore does not grow with instance size.

Responses leave in the order the requests came, even when the commits of two
instances finish out of order on the blocking runner's threads (PS3.7 9.1.1:
with an asynchronous operations window of 1 there is one outstanding request
at a time; a peer that sends more anyway is still answered in order, which
is HARDENING P38's "handled one at a time").

Storage Commitment (issue 15): on a context of the Push Model SOP Class an
N-ACTION-RQ (a modality's request) or an N-EVENT-REPORT-RQ (an archive's
report on a request of ours) carries a small data set. It is buffered in
memory up to :data:`MAX_COMMITMENT_DATASET` (over that the rest is swallowed
and the answer is 0x0213 resource limitation, PS3.7 10.1.4.1.10 and
10.1.1.1.8), then handed to the :class:`ICommitmentSCP`; its answer takes its
turn among the C-STORE responses. N-ACTION and N-EVENT-REPORT on any other
context are answered 0x0211 (unrecognized operation), as before.

Query/Retrieve (issue 16): a C-FIND-RQ, C-MOVE-RQ or C-GET-RQ on a context of
its verb's Query/Retrieve SOP class (PS3.4 C.6) carries a small identifier: it
is buffered up to :data:`MAX_IDENTIFIER`, then handed to the
:class:`IQueryRetrieveSCP` with a responder (:class:`QRResponder`, the
:class:`gateway.qr.context.IResponder`) whose pending and final responses
take the request's turn among the others, and leave as soon as it is at the
head. A C-CANCEL-RQ whose MessageIDBeingRespondedTo names an open Q/R request
fires that responder's ``cancelled`` (PS3.7 9.3.2.3); one naming nothing open
is ignored (it is never answered, PS3.7 9.3.2.3).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import events
from gateway.dimse import commands as dimse
from gateway.commitment.model import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from gateway.dimse.errors import DIMSEProtocolError
from gateway.dimse.pdv import CommandComplete, DatasetFragment, Reassembler
from gateway.dimse.status import Status
from gateway.spool import InstanceMeta, Spool, SpooledInstance, SpoolError, SpoolWriter
from gateway.ul.negotiate import AcceptedContext
from gateway.ul.pdu import PDV

#: Pause reading from the peer while this many commits are outstanding (DESIGN 4, backpressure).
_PAUSE_AT = 4
#: Resume once fewer than this many are outstanding.
_RESUME_BELOW = 2

#: The largest N-ACTION / N-EVENT-REPORT data set kept in memory (issue 15).
#: The codec takes at most 100,000 references; one Referenced SOP Sequence
#: item of the largest kind (undefined lengths, two 64-byte UIDs) is about
#: 130 bytes, so 16 MiB holds every request it would decode, and bounds what a
#: hostile peer can make one association hold.
MAX_COMMITMENT_DATASET = 16 * 1024 * 1024

#: An N-ACTION-RQ or N-EVENT-REPORT-RQ the service takes.
NRequest = dimse.NActionRQ | dimse.NEventReportRQ

#: The largest C-FIND/C-MOVE/C-GET identifier kept in memory (issue 16). A
#: query identifier is a handful of keys; a retrieve at IMAGE level may list
#: SOP Instance UIDs (at most 65 bytes each): 1 MiB holds some 16,000 of them.
MAX_IDENTIFIER = 1024 * 1024

#: The Query/Retrieve verbs by request Command Field (PS3.7 9.3.2-9.3.4).
QR_VERBS: Mapping[int, str] = {
    dimse.CommandField.C_FIND_RQ: "find",
    dimse.CommandField.C_MOVE_RQ: "move",
    dimse.CommandField.C_GET_RQ: "get",
}

_VERB_FIELDS: Mapping[str, int] = {verb: code for code, verb in QR_VERBS.items()}

#: The SOP classes of each verb (PS3.4 C.6.1.1.1, C.6.2.1.1: Patient Root and Study Root).
QR_SOP_CLASSES: Mapping[str, frozenset[str]] = {
    "find": frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"}),
    "move": frozenset({"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"}),
    "get": frozenset({"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"}),
}

#: The typed request classes of :mod:`gateway.dimse.commands` by verb (where it has them).
_QR_TYPE_NAMES: Mapping[str, str] = {"CFindRQ": "find", "CMoveRQ": "move", "CGetRQ": "get"}

#: Sub-operation count elements of C-MOVE-RSP / C-GET-RSP (PS3.7 9.3.3.2, 9.3.4.2, E.1).
_REMAINING, _COMPLETED, _FAILED, _WARNING = 0x00001020, 0x00001021, 0x00001022, 0x00001023


@dataclass(frozen=True)
class QRRequest:
    """What the service reads of a C-FIND/C-MOVE/C-GET-RQ (PS3.7 9.3.2.1, 9.3.3.1, 9.3.4.1).

    Handed to the handlers when the command decoded as
    :class:`~gateway.dimse.commands.UnknownCommand`; a typed request of
    :mod:`gateway.dimse.commands` is handed as it is (same attribute names).
    """

    command_field: int
    message_id: int
    affected_sop_class_uid: str
    priority: int = 0
    move_destination: str = ""
    has_dataset: bool = False


def qr_request(command: Any) -> tuple[str, QRRequest] | None:
    """The verb and fields of a Q/R request, or ``("cancel", ...)`` for C-CANCEL-RQ; ``None`` for anything else."""
    verb = _QR_TYPE_NAMES.get(type(command).__name__)
    if verb is not None:
        return verb, QRRequest(
            _VERB_FIELDS[verb],
            int(command.message_id),
            str(getattr(command, "affected_sop_class_uid", "") or ""),
            int(getattr(command, "priority", 0) or 0),
            str(getattr(command, "move_destination", "") or ""),
            bool(getattr(command, "has_dataset", False)),
        )
    if type(command).__name__ == "CCancelRQ":
        message_id = getattr(command, "message_id_being_responded_to", None)
        if message_id is None:
            message_id = getattr(command, "message_id", 0)
        return "cancel", QRRequest(dimse.CommandField.C_CANCEL_RQ, int(message_id), "")
    if not isinstance(command, dimse.UnknownCommand):
        return None
    if command.command_field == dimse.CommandField.C_CANCEL_RQ:
        return "cancel", QRRequest(command.command_field, command.message_id, "")
    verb = QR_VERBS.get(command.command_field)
    if verb is None:
        return None
    elements = command.elements

    def text(tag: int) -> str:
        raw = elements.get(tag, b"")
        return raw.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ")

    priority = elements.get(dimse.Tag.PRIORITY, b"")
    return verb, QRRequest(
        command.command_field,
        command.message_id,
        text(dimse.Tag.AFFECTED_SOP_CLASS_UID),
        int.from_bytes(priority[:2], "little") if len(priority) >= 2 else 0,
        text(dimse.Tag.MOVE_DESTINATION),
        command.has_dataset,
    )


class IQueryRetrieveSCP(Protocol):
    """The Query/Retrieve SCP the service hands requests to (:class:`gateway.qr.scp.QueryRetrieveSCP`)."""

    def handle(self, verb: str, info: "AssociationInfo", rq: Any, identifier: bytes, responder: "QRResponder") -> None:
        """Serve one request (``verb``: find, move, get); ends with ``responder.final`` exactly once."""


class ICommitmentSCP(Protocol):
    """The Storage Commitment SCP the service hands requests to (:class:`gateway.commitment.scp.CommitmentSCP`)."""

    def action(
        self, info: "AssociationInfo", rq: dimse.NActionRQ, dataset: bytes, transfer_syntax: str
    ) -> "Deferred[tuple[int, str]]":
        """Answer an N-ACTION-RQ: fires with ``(status, error comment)``, never fails."""

    def event_report(
        self, info: "AssociationInfo", rq: dimse.NEventReportRQ, dataset: bytes, transfer_syntax: str
    ) -> "Deferred[tuple[int, str]]":
        """Answer an N-EVENT-REPORT-RQ: fires with ``(status, error comment)``, never fails."""

    def association_opened(self, info: "AssociationInfo", channel: "StorageService") -> None:
        """An association with the Push Model context accepted began (a report may go on it)."""

    def association_closed(self, channel: "StorageService") -> None:
        """That association ended."""


class ReportNotAnswered(Exception):
    """An N-EVENT-REPORT-RQ we sent on a requester's association got no response (it ended first)."""


class IDIMSEPeer(Protocol):
    """What the service needs from the association it serves (implemented by the adapter)."""

    def send_command(self, context_id: int, command: bytes) -> None:
        """Send a command set (no data set) on ``context_id``, fragmented to the peer's maximum."""

    def send_dataset(self, context_id: int, data: bytes) -> None:
        """Send a (small, in memory) data set on ``context_id``, fragmented to the peer's maximum."""

    def send_file(self, context_id: int, path: str, offset: int) -> "Deferred[None]":
        """Stream a data set from a file (bytes from ``offset``) on ``context_id`` (C-GET sub-operations)."""

    def release_response(self) -> None:
        """Answer the peer's A-RELEASE-RQ (Evt14)."""

    def abort_association(self, detail: str) -> None:
        """Send A-ABORT(0, 0) for a DIMSE-level violation (HARDENING R2) and close."""

    def pause_reading(self) -> None:
        """Stop reading from the transport (backpressure)."""

    def resume_reading(self) -> None:
        """Start reading from the transport again."""


@dataclass(frozen=True)
class AssociationInfo:
    """Who is on the other end of an accepted association.

    :ivar assoc_id: a short internal id for logs (never peer data).
    :ivar contexts: the accepted presentation contexts by ID.
    """

    assoc_id: str
    peer_address: str
    calling_ae_title: str
    called_ae_title: str
    listener: str
    contexts: Mapping[int, AcceptedContext]
    listener_port: int = 0
    tls_subject: str = ""
    #: The FIND SOP classes for which relational-queries was granted (PS3.4 C.5.1.1).
    relational_queries: frozenset[str] = frozenset()
    #: How the instance came in (:attr:`gateway.route.RoutingContext.origin`): STOW-RS sets ``dicomweb``.
    origin: str = "dimse"


@dataclass(frozen=True)
class InstanceReport:
    """The outcome of one C-STORE, for logs and (later) metrics."""

    assoc_id: str
    calling_ae_title: str
    sop_class_uid: str
    sop_instance_uid: str
    size: int
    status: int
    comment: str = ""
    spooled: SpooledInstance | None = None
    #: Ties this receipt to the instance's forward attempts (empty when not journaled).
    correlation_id: str = ""


@dataclass
class _Response:
    """One response waiting for its turn (responses leave in request order)."""

    context_id: int
    command: bytes | None = None
    #: A Q/R request's responses (command set, data set), sent in turn; ``done`` once the final is in.
    stream: "deque[tuple[bytes, bytes | None]] | None" = None
    done: bool = False


@dataclass
class _Incoming:
    """The C-STORE whose data set is arriving now."""

    context_id: int
    #: ``None`` while swallowing the data set of an operation we do not implement.
    request: dimse.CStoreRQ | None
    writer: SpoolWriter | None
    #: A status decided before the data set arrived (e.g. 0x0122); its bytes are discarded.
    early_status: int | None = None
    early_comment: str = ""
    size: int = 0
    #: For an unimplemented operation: the response slot and the answer to put in it.
    pending_answer: tuple[_Response, bytes] | None = None
    #: For an N-ACTION / N-EVENT-REPORT: the request, its response slot and its data set so far.
    n_request: "NRequest | None" = None
    n_slot: _Response | None = None
    n_buffer: bytearray | None = None
    #: A response's data set we neither expect nor need (an Event Reply): discarded.
    swallow: bool = False
    #: For a C-FIND/C-MOVE/C-GET-RQ: its responder and its identifier so far.
    qr: "QRResponder | None" = None


#: Seals, routes and journals an instance whose last fragment has arrived;
#: fires with the :class:`~gateway.intake.Admission` to answer (see
#: :meth:`gateway.intake.Intake.take`). ``None`` acknowledges once the spool
#: has made the instance durable (no queue: the network-core configuration).
#: A C-MOVE sub-operation adds a third argument, its Move Originator AE Title
#: and Message ID (issue 16); other C-STOREs are admitted with two.
Admit = Callable[..., "Deferred[Any]"]


class StorageService:
    """Verification and Storage SCP for one association.

    :param peer: the adapter that sends and aborts.
    :param info: the association's identity and accepted contexts.
    :param spool: where instances are written.
    :param observer: told of each C-STORE answered (:class:`~gateway.events.InstanceStored` with its :class:`InstanceReport`).
    :param admit: seals, routes and journals an instance before the ack (an
        :class:`~gateway.intake.Intake`'s ``take``); its result has
        ``status``, ``comment`` and ``spooled``.
    :param space_low: returns true while the spool is below its free-space
        floor; C-STOREs are then answered 0xA700 (out of resources) at once.
    :param commitment: the Storage Commitment SCP (issue 15), or ``None``:
        an N-ACTION is then refused (0x0124) and an N-EVENT-REPORT answered
        0x0110 (only reachable where unknown SOP classes are accepted).
    :param max_commitment_dataset: see :data:`MAX_COMMITMENT_DATASET`.
    :param qr: the Query/Retrieve SCP (issue 16), or ``None``: C-FIND,
        C-MOVE and C-GET requests are then refused 0x0122 (SOP class not
        supported; only reachable where their classes are accepted anyway).
    :param max_identifier: see :data:`MAX_IDENTIFIER`.
    """

    log = Logger(namespace="gateway.receive")

    def __init__(
        self,
        peer: IDIMSEPeer,
        info: AssociationInfo,
        spool: Spool,
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        admit: Admit | None = None,
        space_low: Callable[[], bool] = lambda: False,
        commitment: ICommitmentSCP | None = None,
        max_commitment_dataset: int = MAX_COMMITMENT_DATASET,
        qr: IQueryRetrieveSCP | None = None,
        max_identifier: int = MAX_IDENTIFIER,
    ) -> None:
        self._qr = qr
        self._max_identifier = max_identifier
        #: Open Q/R requests by Message ID (a C-CANCEL-RQ names one, PS3.7 9.3.2.3).
        self._qr_open: dict[int, QRResponder] = {}
        #: C-STORE-RQs we sent as C-GET sub-operations, awaiting their C-STORE-RSP, by Message ID.
        self._stores_waiting: dict[int, Deferred[int]] = {}
        #: Whether the adapter's write buffer is full, and who waits for it to drain.
        self._writes_paused = False
        self._writable_waiters: list[Deferred[None]] = []
        self._commitment = commitment
        self._max_commitment_dataset = max_commitment_dataset
        self._admit = admit
        self._space_low = space_low
        self._peer = peer
        self._info = info
        self._spool = spool
        self._observer = observer
        self._reassembler = Reassembler()
        self._incoming: _Incoming | None = None
        self._responses: deque[_Response] = deque()
        self._outstanding = 0
        self._paused = False
        self._release_requested = False
        self._closed = False
        #: Called once nothing is in progress and every response is sent (a draining shutdown).
        self.on_idle: Callable[[], None] | None = None
        self.instances_ok = 0
        self.instances_failed = 0
        #: The N-EVENT-REPORT-RQ we sent and await (message ID, its answer), one at a time (PS3.7 D.3.3.3).
        self._report_pending: tuple[int, Deferred[tuple[int, str]]] | None = None
        #: Message IDs of reports given up (timed out): their late response is ignored.
        self._report_abandoned: set[int] = set()
        self._next_message_id = 1
        if commitment is not None and self.report_context() is not None:
            commitment.association_opened(info, self)

    # -- input from the adapter ------------------------------------------------------------

    def pdata(self, pdvs: tuple[PDV, ...]) -> None:
        """Handle one P-DATA indication."""
        for pdv in pdvs:
            if self._closed:
                return
            try:
                events = self._reassembler.feed(pdv)
            except DIMSEProtocolError as e:
                self._protocol_violation(str(e))
                return
            for event in events:
                if isinstance(event, CommandComplete):
                    self._command(event)
                else:
                    self._fragment(event)

    def release_requested(self) -> None:
        """The peer sent A-RELEASE-RQ.

        A release in the middle of a data set is a protocol violation: the
        partial instance is discarded and never acknowledged (HARDENING P29).
        Otherwise we answer once every outstanding response has been sent.
        """
        if self._incoming is not None:
            self._protocol_violation("A-RELEASE-RQ in the middle of a data set")
            return
        self._release_requested = True
        self._flush()

    def connection_lost(self) -> None:
        """The association ended (abort, close or release): discard any partial instance."""
        was_closed, self._closed = self._closed, True
        if self._incoming is not None and self._incoming.writer is not None:
            self._incoming.writer.discard()
        self._incoming = None
        if was_closed:
            return
        if self._commitment is not None and self.report_context() is not None:
            self._commitment.association_closed(self)
        pending, self._report_pending = self._report_pending, None
        if pending is not None:
            pending[1].errback(ReportNotAnswered("the association ended before the N-EVENT-REPORT-RSP"))
        # Every open Q/R request is cancelled: its handler stops the sources (the final goes nowhere).
        open_requests, self._qr_open = self._qr_open, {}
        for responder in open_requests.values():
            responder.cancel()
        stores, self._stores_waiting = self._stores_waiting, {}
        for d in stores.values():
            d.errback(ReportNotAnswered("the association ended before the C-STORE-RSP"))
        self.writes_resumed()  # nobody waits for a buffer that will never drain

    @property
    def busy(self) -> bool:
        """Whether an instance is being received or committed right now."""
        return self._incoming is not None or self._outstanding > 0

    # -- DIMSE messages --------------------------------------------------------------------

    def _command(self, event: CommandComplete) -> None:
        command = event.command
        context = self._info.contexts.get(event.context_id)
        if context is None:  # the UL layer already refuses unaccepted contexts; be safe
            self._protocol_violation(f"command on unaccepted presentation context {event.context_id}")
            return
        qr = qr_request(command)
        if qr is not None:
            verb, request = qr
            if verb == "cancel":
                self._cancel(request.message_id)
            else:
                self._begin_qr(event.context_id, command, verb, request, context)
            return
        if isinstance(command, dimse.CEchoRQ):
            response = dimse.encode_command(dimse.echo_response(command))
            if command.has_dataset:
                self._protocol_violation("C-ECHO-RQ announces a data set")
                return
            self._responses.append(_Response(event.context_id, response))
            self._flush()
        elif isinstance(command, dimse.CStoreRQ):
            self._begin_store(event.context_id, command, context)
        elif isinstance(command, (dimse.NActionRQ, dimse.NEventReportRQ)):
            self._begin_n_request(event.context_id, command, context)
        elif isinstance(command, dimse.UnknownCommand):
            self._unknown(event.context_id, command)
        elif isinstance(command, dimse.CStoreRSP) and command.message_id_being_responded_to in self._stores_waiting:
            # A C-GET requester's answer to one of our C-STORE sub-operations (PS3.4 C.4.3.3).
            self._stores_waiting.pop(command.message_id_being_responded_to).callback(command.status)
        elif isinstance(command, dimse.NEventReportRSP) and self._report_answered(command):
            if command.has_dataset:
                self._incoming = _Incoming(event.context_id, None, None, swallow=True)
        else:
            # A response (C-ECHO-RSP, C-STORE-RSP) sent to an SCP that issued no request.
            self._protocol_violation(f"unexpected {type(command).__name__}")

    def _unknown(self, context_id: int, command: dimse.UnknownCommand) -> None:
        """Answer an operation we do not implement with 0x0211 (PS3.7 C.5.4, HARDENING D21)."""
        answer = dimse.unrecognized_operation_response(command)
        if answer is None:
            return
        slot = _Response(context_id)
        self._responses.append(slot)
        if command.has_dataset:
            # Swallow its data set first, then answer.
            self._incoming = _Incoming(
                context_id, None, None, pending_answer=(slot, dimse.encode_command(answer))
            )
            return
        slot.command = dimse.encode_command(answer)
        self._flush()

    # -- reports on this association (``report_association: open``, issue 15) ---------------

    def report_context(self) -> AcceptedContext | None:
        """The accepted Push Model context a Storage Commitment report could go on, or ``None``.

        On the requester's own association the gateway is the SOP class's SCP
        already, so it may invoke N-EVENT-REPORT there without role selection
        (PS3.4 J.3.3: the report may use the N-ACTION's association).
        """
        for context in self._info.contexts.values():
            if context.abstract_syntax == STORAGE_COMMITMENT_PUSH and context.scu_role:
                return context
        return None

    @property
    def reporting(self) -> bool:
        """Whether a report we sent here still awaits its response (one at a time, PS3.7 D.3.3.3)."""
        return self._report_pending is not None

    def send_event_report(self, event_type_id: int, dataset: bytes) -> "Deferred[tuple[int, str]]":
        """Send an N-EVENT-REPORT-RQ (PS3.7 10.3.1.1) on the Push Model context; fires with its response.

        :param event_type_id: 1 or 2 (PS3.4 Table J.3-2).
        :param dataset: the Event Information, encoded in the context's transfer syntax.
        :returns: a Deferred firing with ``(status, error comment)`` of the
            N-EVENT-REPORT-RSP, failing with :class:`ReportNotAnswered` when the
            association ends first; cancelling it (a timeout) gives the report up.
        :raises ValueError: no Push Model context, a report already pending, or the association ended.
        """
        context = self.report_context()
        if context is None or self._closed or self._report_pending is not None:
            raise ValueError("no Storage Commitment report can be sent on this association now")
        message_id = self._next_message_id
        self._next_message_id = message_id % 0xFFFF + 1

        def cancel(d: "Deferred[tuple[int, str]]") -> None:
            if self._report_pending is not None and self._report_pending[0] == message_id:
                self._report_pending = None
                self._report_abandoned.add(message_id)

        d: Deferred[tuple[int, str]] = Deferred(cancel)
        self._report_pending = (message_id, d)
        rq = dimse.NEventReportRQ(message_id, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, event_type_id, True)
        self._peer.send_command(context.context_id, dimse.encode_command(rq))
        self._peer.send_dataset(context.context_id, dataset)
        return d

    def _report_answered(self, rsp: dimse.NEventReportRSP) -> bool:
        """Take the response to our report; ``False`` when it answers nothing we sent (a protocol error)."""
        message_id = rsp.message_id_being_responded_to
        if message_id in self._report_abandoned:
            # Given up already (timed out): a late answer is harmless.
            self._report_abandoned.discard(message_id)
            return True
        pending = self._report_pending
        if pending is None or pending[0] != message_id:
            return False
        self._report_pending = None
        pending[1].callback((rsp.status, rsp.error_comment or ""))
        return True

    def _begin_n_request(self, context_id: int, rq: NRequest, context: AcceptedContext) -> None:
        """An N-ACTION-RQ or N-EVENT-REPORT-RQ: buffer its data set, then ask the commitment SCP (issue 15)."""
        slot = _Response(context_id)
        self._responses.append(slot)
        if context.abstract_syntax != STORAGE_COMMITMENT_PUSH:
            # Only Storage Commitment uses them here: elsewhere 0x0211 as before (PS3.7 C.5, HARDENING D21).
            answer = self._n_response(rq, Status.UNRECOGNIZED_OPERATION, "")
            if rq.has_dataset:
                self._incoming = _Incoming(context_id, None, None, pending_answer=(slot, answer))
            else:
                slot.command = answer
                self._flush()
            return
        self._outstanding += 1
        if rq.has_dataset:
            self._incoming = _Incoming(context_id, None, None, n_request=rq, n_slot=slot, n_buffer=bytearray())
            return
        # No data set: the SCP answers what is missing (the Action Information is required, PS3.4 J.3.2.1.1).
        self._dispatch_n_request(slot, rq, b"", context, overflowed=False)

    def _dispatch_n_request(
        self, slot: _Response, rq: NRequest, data: bytes, context: AcceptedContext, overflowed: bool
    ) -> None:
        """Hand a complete N request to the commitment SCP; its answer fills ``slot``."""
        # Backpressure as for C-STOREs (DESIGN 4): each request waiting for the
        # journal holds its decoded references, so a peer that pipelines them
        # is paused like one that pipelines instances.
        if self._outstanding >= _PAUSE_AT and not self._paused:
            self._paused = True
            self._peer.pause_reading()
        own: tuple[int, str, str] | None = None
        if overflowed:
            # PS3.7 C.5: resource limitation, the data set was larger than we keep in memory.
            own = (Status.RESOURCE_LIMITATION, f"Resource limitation: data set over {self._max_commitment_dataset} bytes", "invalid")
        elif self._commitment is None:
            if isinstance(rq, dimse.NActionRQ):
                own = (Status.NOT_AUTHORIZED, "Storage Commitment is not offered here", "refused")
            else:
                own = (Status.PROCESSING_FAILURE, "No Storage Commitment report is awaited here", "refused")
        d: Deferred[tuple[int, str]]
        if own is not None:
            # Answered here, never seen by the SCP: the audit and metrics still hear of it.
            status, comment, outcome = own
            self._observe_n_answer(rq, status, comment, outcome)
            d = succeed((status, comment))
        elif isinstance(rq, dimse.NActionRQ):
            assert self._commitment is not None
            d = self._commitment.action(self._info, rq, data, context.transfer_syntax)
        else:
            assert self._commitment is not None
            d = self._commitment.event_report(self._info, rq, data, context.transfer_syntax)

        def unexpected(failure: Failure) -> tuple[int, str]:
            self.log.failure("{assoc_id} Storage Commitment handling failed", failure, assoc_id=self._info.assoc_id)
            return Status.PROCESSING_FAILURE, "Processing failure"

        def answer(result: tuple[int, str]) -> None:
            status, comment = result
            self._outstanding -= 1
            if self._paused and self._outstanding < _RESUME_BELOW:
                # Whichever answer brings the count down resumes (else a pause
                # made by a C-STORE behind N requests would never end).
                self._paused = False
                if not self._closed:
                    self._peer.resume_reading()
            slot.command = self._n_response(rq, status, comment)
            self._flush()

        d.addErrback(unexpected)
        d.addCallback(answer)
        d.addErrback(lambda f: self.log.failure("answering a Storage Commitment message failed", f))

    def _observe_n_answer(self, rq: NRequest, status: int, comment: str, outcome: str) -> None:
        """Tell the observer of a commitment message answered by the service itself."""
        info = self._info
        if isinstance(rq, dimse.NActionRQ):
            self._observer.observe(
                events.CommitmentRequested(
                    info.listener, info.calling_ae_title, info.peer_address, "", outcome, status, 0, comment
                )
            )
        else:
            self._observer.observe(events.ArchiveCommitmentReported("", info.calling_ae_title, "", 0, 0, status))

    def _n_response(self, rq: NRequest, status: int, comment: str) -> bytes:
        """The encoded N-ACTION-RSP or N-EVENT-REPORT-RSP answering ``rq`` (PS3.7 10.3.4.2, 10.3.1.2)."""
        response: dimse.NActionRSP | dimse.NEventReportRSP
        if isinstance(rq, dimse.NActionRQ):
            response = dimse.action_response(rq, status, comment)
        else:
            response = dimse.event_report_response(rq, status, comment)
        try:
            return dimse.encode_command(response)
        except ValueError:
            # A peer's UID we cannot encode again (over 64 bytes): the Affected
            # SOP Class and Instance UIDs of both responses are U, optional
            # (PS3.7 Tables 10.3-2 and 10.3-8), so leave them out.
            return dimse.encode_command(replace(response, affected_sop_class_uid=None, affected_sop_instance_uid=None))

    # -- Query/Retrieve (issue 16) -------------------------------------------------------

    def _begin_qr(self, context_id: int, command: Any, verb: str, request: QRRequest, context: AcceptedContext) -> None:
        """A C-FIND/C-MOVE/C-GET-RQ: buffer its identifier, then hand it to the Q/R SCP."""
        rq = command if type(command).__name__ in _QR_TYPE_NAMES else request
        responder = QRResponder(self, _Response(context_id, stream=deque()), verb, request, context)
        self._responses.append(responder.slot)
        if request.message_id in self._qr_open:
            # PS3.7 C.5 (0x0210 duplicate invocation): a Message ID already in use by an open request.
            responder.final(Status.DUPLICATE_INVOCATION, error_comment="Message ID in use by an open request")
        elif self._qr is None or not any(context.abstract_syntax in classes for classes in QR_SOP_CLASSES.values()):
            # No Q/R SCP on this service, or the request came on a context that is
            # no Q/R one (a storage context): an operation that SOP class does not
            # have, unrecognized as before issue 16 (PS3.7 C.5.4, HARDENING D21).
            responder.final(Status.UNRECOGNIZED_OPERATION)
        elif request.affected_sop_class_uid != context.abstract_syntax or (
            context.abstract_syntax not in QR_SOP_CLASSES[verb]
        ):
            # Not a Q/R context of this verb, or a SOP class other than the context's (as for C-STORE, HARDENING D07).
            responder.final(Status.SOP_CLASS_NOT_SUPPORTED, error_comment="SOP class not supported")
        elif not request.has_dataset:
            # The Identifier is required (PS3.7 9.3.2.1, 9.3.3.1, 9.3.4.1): 0xC000-class failure.
            responder.final(Status.CANNOT_UNDERSTAND, error_comment="request without an Identifier")
        else:
            self._qr_open[request.message_id] = responder
            self._incoming = _Incoming(context_id, None, None, qr=responder, n_buffer=bytearray())
            responder.rq = rq
            return
        if request.has_dataset:
            self._incoming = _Incoming(context_id, None, None, swallow=True)

    def _dispatch_qr(self, responder: "QRResponder", identifier: bytes, overflowed: bool) -> None:
        """Hand a complete request to the Q/R SCP (its handler answers through ``responder``)."""
        if overflowed:
            # PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4: refused, out of resources.
            status = Status.OUT_OF_RESOURCES if responder.verb == "find" else 0xA701
            responder.final(status, error_comment=f"Identifier over {self._max_identifier} bytes")
            return
        assert self._qr is not None
        try:
            self._qr.handle(responder.verb, self._info, responder.rq, identifier, responder)
        except Exception:
            self.log.failure("{assoc_id} Query/Retrieve handling failed", assoc_id=self._info.assoc_id)
            responder.final(Status.CANNOT_UNDERSTAND, error_comment="Unable to process")

    def _cancel(self, message_id: int) -> None:
        """A C-CANCEL-RQ (PS3.7 9.3.2.3): tell the open request it names; never answered itself."""
        responder = self._qr_open.get(message_id)
        if responder is None:
            self.log.debug("{assoc_id} C-CANCEL-RQ for {message_id}, not open: ignored", assoc_id=self._info.assoc_id, message_id=message_id)
            return
        responder.cancel()

    def _qr_finished(self, responder: "QRResponder") -> None:
        """The responder's final response is queued: it is no longer open."""
        if self._qr_open.get(responder.request.message_id) is responder:
            del self._qr_open[responder.request.message_id]
        self._flush()

    def allocate_message_id(self) -> int:
        """A Message ID for a request we send on this association (C-GET sub-operations, reports)."""
        message_id = self._next_message_id
        self._next_message_id = message_id % 0xFFFF + 1
        return message_id

    def expect_store_response(self, message_id: int) -> "Deferred[int]":
        """Fires with the status of the C-STORE-RSP answering our C-STORE-RQ ``message_id`` (C-GET, PS3.4 C.4.3.3)."""
        d: Deferred[int] = Deferred()
        self._stores_waiting[message_id] = d
        return d

    def writes_paused(self) -> None:
        """The adapter's write buffer is full (HARDENING P35): Q/R handlers wait (:meth:`writable`)."""
        self._writes_paused = True

    def writes_resumed(self) -> None:
        """The write buffer drained: wake the Q/R handlers waiting to send more."""
        self._writes_paused = False
        waiting, self._writable_waiters = self._writable_waiters, []
        for d in waiting:
            d.callback(None)

    def writable(self) -> "Deferred[None]":
        """Fires when more responses may be queued: at once, or when the write buffer has drained (or the association ended).

        A C-FIND handler waits on it before reading more of a source, so a
        requester that reads slowly slows the sources down instead of
        growing our buffers (issue 16: streaming, never a whole result set).
        """
        if not self._writes_paused or self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._writable_waiters.append(d)
        return d

    def store_sub_operation(
        self, path: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset_offset: int
    ) -> "Deferred[int]":
        """Send a C-STORE-RQ with the file's data set to the requester; fire with its C-STORE-RSP status.

        The context must be one the requester accepted for that SOP class and
        transfer syntax with itself in the SCP role (SCP/SCU Role Selection,
        PS3.7 D.3.3.4; PS3.4 C.4.3.3); otherwise this fails with
        :class:`~gateway.associate.NoPresentationContext` and the caller counts
        a failed sub-operation. The data set streams from the file (never
        whole in memory). No Move Originator fields: they belong to C-MOVE
        sub-operations only (PS3.7 9.1.1.1).
        """
        from gateway.associate import NoPresentationContext

        context = next(
            (
                c
                for c in self._info.contexts.values()
                if c.abstract_syntax == sop_class_uid and c.transfer_syntax == transfer_syntax_uid and c.scp_role
            ),
            None,
        )
        if context is None:
            return fail(NoPresentationContext(f"the requester accepted no SCP-role context for {sop_class_uid} in {transfer_syntax_uid}"))
        if self._closed:
            return fail(ReportNotAnswered("the association has ended"))
        message_id = self.allocate_message_id()
        while message_id in self._stores_waiting:
            message_id = self.allocate_message_id()
        answer = self.expect_store_response(message_id)
        self._peer.send_command(context.context_id, dimse.encode_command(dimse.CStoreRQ(message_id, sop_class_uid, sop_instance_uid)))
        sent = self._peer.send_file(context.context_id, path, dataset_offset)

        def not_sent(failure: Failure) -> None:
            waiting = self._stores_waiting.pop(message_id, None)
            if waiting is not None:
                waiting.errback(failure)

        sent.addErrback(not_sent)
        return answer

    @property
    def peer(self) -> IDIMSEPeer:
        """The adapter this service sends on (for a C-GET sub-operation's data set)."""
        return self._peer

    @property
    def info(self) -> AssociationInfo:
        """The association served."""
        return self._info

    def _begin_store(self, context_id: int, rq: dimse.CStoreRQ, context: AcceptedContext) -> None:
        if not rq.has_dataset:
            # PS3.7 9.3.1.1: a C-STORE-RQ always carries a data set (HARDENING D19, pinned 0xC000).
            self._finish_store(_Incoming(context_id, rq, None), Status.CANNOT_UNDERSTAND, "C-STORE-RQ without a data set")
            return
        incoming = _Incoming(context_id, rq, None)
        if rq.affected_sop_class_uid != context.abstract_syntax:
            # The command names a SOP class other than the context's abstract
            # syntax (HARDENING D07): refuse with 0x0122, discarding its data set.
            incoming.early_status = Status.SOP_CLASS_NOT_SUPPORTED
            incoming.early_comment = "SOP class differs from the presentation context"
        elif self._space_low():
            # Below the spool's free-space floor: the modality keeps its copy
            # and retries later (issue 3 "Disk"; HARDENING D11).
            incoming.early_status = Status.OUT_OF_RESOURCES
            incoming.early_comment = "Out of resources: spool below its free-space floor"
        else:
            meta = InstanceMeta(
                sop_class_uid=rq.affected_sop_class_uid,
                sop_instance_uid=rq.affected_sop_instance_uid,
                transfer_syntax_uid=context.transfer_syntax,
                calling_ae_title=self._info.calling_ae_title,
                called_ae_title=self._info.called_ae_title,
            )
            try:
                incoming.writer = self._spool.begin(meta)
            except SpoolError as e:
                incoming.early_status, incoming.early_comment = e.status, e.comment
        self._incoming = incoming

    def _fragment(self, event: DatasetFragment) -> None:
        incoming = self._incoming
        if incoming is None:
            self._protocol_violation("data set fragment with no C-STORE pending")
            return
        incoming.size += len(event.data)
        if incoming.n_buffer is not None:
            if incoming.size <= (self._max_identifier if incoming.qr is not None else self._max_commitment_dataset):
                incoming.n_buffer.extend(event.data)
            else:
                # Over the cap: keep nothing while the rest is swallowed.
                incoming.n_buffer.clear()
        if incoming.writer is not None and incoming.early_status is None:
            incoming.writer.write(event.data)
        if not event.last:
            return
        self._incoming = None
        if incoming.swallow:
            return
        if incoming.qr is not None and incoming.n_buffer is not None:
            overflowed = incoming.size > self._max_identifier
            self._dispatch_qr(incoming.qr, b"" if overflowed else bytes(incoming.n_buffer), overflowed)
            return
        if incoming.n_request is not None and incoming.n_slot is not None and incoming.n_buffer is not None:
            context = self._info.contexts[incoming.context_id]
            overflowed = incoming.size > self._max_commitment_dataset
            self._dispatch_n_request(
                incoming.n_slot, incoming.n_request, b"" if overflowed else bytes(incoming.n_buffer), context, overflowed
            )
            return
        if incoming.pending_answer is not None:  # an unknown operation's data set
            slot, answer = incoming.pending_answer
            slot.command = answer
            self._flush()
            return
        if incoming.early_status is not None or incoming.writer is None:
            if incoming.writer is not None:
                incoming.writer.discard()
            self._finish_store(incoming, incoming.early_status or Status.OUT_OF_RESOURCES, incoming.early_comment)
            return
        self._commit(incoming)

    def _commit(self, incoming: _Incoming) -> None:
        """Commit the spooled instance, then answer in request order."""
        assert incoming.writer is not None
        slot = _Response(incoming.context_id)
        self._responses.append(slot)
        self._outstanding += 1
        if self._outstanding >= _PAUSE_AT and not self._paused:
            self._paused = True
            self._peer.pause_reading()

        answered = False

        def answer(status: int, comment: str, spooled: SpooledInstance | None, correlation_id: str = "") -> None:
            # Exactly one response per request, whatever fails after it.
            nonlocal answered
            if not answered:
                answered = True
                self._respond(slot, incoming, status, comment, spooled, correlation_id)

        def committed(spooled: SpooledInstance) -> None:
            answer(Status.SUCCESS, "", spooled)

        def admitted(admission: Any) -> None:
            answer(
                admission.status,
                admission.comment,
                admission.spooled if admission.status == 0 else None,
                getattr(admission, "correlation_id", ""),
            )

        def failed(failure: Failure) -> None:
            if failure.check(SpoolError):
                error: SpoolError = failure.value  # type: ignore[assignment]
                answer(error.status, error.comment, None)
            else:
                self.log.failure("storing an instance failed unexpectedly", failure)
                # Never 0x0000 unless custody is certain: the modality keeps its copy.
                answer(Status.OUT_OF_RESOURCES, "internal error while storing", None)

        d: Deferred[Any]
        if self._admit is None:
            d = incoming.writer.commit()
            d.addCallback(committed)
        else:
            # Custody (issue 13): the intake seals, routes and journals; its
            # answer comes once the file and its journal record are durable.
            request = incoming.request
            sub_operation = None
            if request is not None and request.move_originator_message_id is not None:
                # A C-MOVE sub-operation (PS3.7 9.1.1.1): the intake may match it to a retrieve (issue 16).
                sub_operation = (request.move_originator_ae_title or "", request.move_originator_message_id)
            if sub_operation is None:
                d = self._admit(incoming.writer, self._info)
            else:
                d = self._admit(incoming.writer, self._info, sub_operation)
            d.addCallback(admitted)
        d.addErrback(failed)
        d.addErrback(lambda f: self.log.failure("answering a C-STORE failed", f))

    def _respond(
        self,
        slot: _Response,
        incoming: _Incoming,
        status: int,
        comment: str,
        spooled: SpooledInstance | None,
        correlation_id: str = "",
    ) -> None:
        self._outstanding -= 1
        if self._paused and self._outstanding < _RESUME_BELOW:
            self._paused = False
            if not self._closed:
                self._peer.resume_reading()
        slot.command = self._store_response(incoming, status, comment)
        self._report(incoming, status, comment, spooled, correlation_id)
        self._flush()

    def _finish_store(self, incoming: _Incoming, status: int, comment: str) -> None:
        self._responses.append(_Response(incoming.context_id, self._store_response(incoming, status, comment)))
        self._report(incoming, status, comment, None)
        self._flush()

    def _store_response(self, incoming: _Incoming, status: int, comment: str) -> bytes:
        assert incoming.request is not None
        response = dimse.store_response(incoming.request, status, error_comment=comment or None)
        try:
            return dimse.encode_command(response)
        except ValueError:
            # A peer's UID we cannot encode again (over 64 bytes, HARDENING D06):
            # the Affected SOP Class and Instance UIDs of a C-STORE-RSP are
            # U(=), optional (PS3.7 9.3.1.2), so leave them out rather than
            # leave the request unanswered.
            return dimse.encode_command(
                replace(response, affected_sop_class_uid=None, affected_sop_instance_uid=None)
            )

    def _report(
        self, incoming: _Incoming, status: int, comment: str, spooled: SpooledInstance | None, correlation_id: str = ""
    ) -> None:
        rq = incoming.request
        assert rq is not None
        if status == Status.SUCCESS:
            self.instances_ok += 1
        else:
            self.instances_failed += 1
        self.log.info(
            "{assoc_id} C-STORE {sop_instance_uid} ({sop_class_uid}) {size} bytes: status 0x{status:04X}{comment}",
            assoc_id=self._info.assoc_id,
            sop_class_uid=rq.affected_sop_class_uid,
            sop_instance_uid=rq.affected_sop_instance_uid,
            size=incoming.size,
            status=status,
            comment=f" ({comment})" if comment else "",
            correlation_id=correlation_id,
        )
        self._observer.observe(
            events.InstanceStored(
                InstanceReport(
                    assoc_id=self._info.assoc_id,
                    calling_ae_title=self._info.calling_ae_title,
                    sop_class_uid=rq.affected_sop_class_uid,
                    sop_instance_uid=rq.affected_sop_instance_uid,
                    size=incoming.size,
                    status=status,
                    comment=comment,
                    spooled=spooled,
                    correlation_id=correlation_id,
                )
            )
        )

    # -- output ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send every response whose turn has come; answer a pending release when none is left."""
        if self._closed:
            return
        while self._responses:
            slot = self._responses[0]
            if slot.stream is not None:
                # A Q/R request's responses leave as they come while it is at the head.
                while slot.stream and not self._closed:
                    command, data = slot.stream.popleft()
                    self._peer.send_command(slot.context_id, command)
                    if data is not None:
                        self._peer.send_dataset(slot.context_id, data)
                if not slot.done or self._closed:
                    break
                self._responses.popleft()
                continue
            if slot.command is None:
                break
            self._responses.popleft()
            self._peer.send_command(slot.context_id, slot.command)
        if self._release_requested and not self._responses and self._incoming is None:
            self._release_requested = False
            self._peer.release_response()
        if self.on_idle is not None and not self.busy and not self._responses:
            self.on_idle()

    def _protocol_violation(self, detail: str) -> None:
        """A DIMSE encapsulation violation: discard the partial instance and A-ABORT(0,0) (HARDENING R2, P24)."""
        self.log.warn("{assoc_id} DIMSE protocol error: {detail}", assoc_id=self._info.assoc_id, detail=detail)
        self.connection_lost()
        self._peer.abort_association(detail)


def encode_failed_uids(uids: "tuple[str, ...] | list[str]", transfer_syntax: str) -> bytes:
    """A data set holding only (0008,0058) Failed SOP Instance UID List (PS3.4 C.4.2.1.3, C.4.3.1.3).

    Implicit VR Little Endian for ``1.2.840.10008.1.2``, Explicit VR Little
    Endian otherwise (the little-endian syntaxes the Q/R contexts accept). In
    Explicit VR a UI value is at most 65534 bytes (a 16-bit length, PS3.5
    7.1.2): UIDs that do not fit are left out (the failed count still says
    how many failed).
    """
    explicit = transfer_syntax != "1.2.840.10008.1.2"
    kept: list[str] = []
    size = 0
    for uid in uids:
        extra = len(uid) + (1 if kept else 0)
        if explicit and size + extra > 0xFFFE:
            break
        kept.append(uid)
        size += extra
    value = "\\".join(kept).encode("ascii", "replace")
    if len(value) % 2:
        value += b"\x00"
    if explicit:
        return struct.pack("<HH2sH", 0x0008, 0x0058, b"UI", len(value)) + value
    return struct.pack("<HHI", 0x0008, 0x0058, len(value)) + value


class QRResponder:
    """The :class:`gateway.qr.context.IResponder` of one C-FIND/C-MOVE/C-GET request on this association.

    Its responses go into the request's slot and leave in request order
    (:meth:`StorageService._flush`); after :meth:`final` every call is
    ignored (a handler answers exactly once, :mod:`gateway.qr.context`).

    :ivar rq: the request as handed to the handler (typed, or a :class:`QRRequest`).
    """

    log = Logger(namespace="gateway.receive")

    def __init__(self, service: StorageService, slot: _Response, verb: str, request: QRRequest, context: AcceptedContext) -> None:
        self._service = service
        self.slot = slot
        self.verb = verb
        self.request = request
        self.rq: Any = request
        self._context = context
        self._cancelled: Deferred[None] = Deferred()
        self.finished = False
        self.pending_count = 0

    # -- IResponder ------------------------------------------------------------------------

    @property
    def transfer_syntax(self) -> str:
        """The request's presentation context transfer syntax (identifiers are encoded in it)."""
        return self._context.transfer_syntax

    @property
    def cancelled(self) -> "Deferred[None]":
        """Fires on the requester's C-CANCEL-RQ for this request (PS3.7 9.3.2.3), or when the association ends."""
        return self._cancelled

    def pending(self, status: int, identifier: bytes | None = None, counts: Any = None) -> None:
        """Queue a pending response (0xFF00/0xFF01), with a C-FIND match or C-MOVE/C-GET counts."""
        if self.finished:
            self.log.warn("pending response after the final one ignored")
            return
        self.pending_count += 1
        assert self.slot.stream is not None
        self.slot.stream.append((self._command(status, identifier is not None, counts, ""), identifier))
        self._service._flush()

    def final(
        self,
        status: int,
        counts: Any = None,
        error_comment: str = "",
        failed_uids: "tuple[str, ...] | list[str]" = (),
        identifier: bytes | None = None,
        offending: "tuple[int, ...] | list[int]" = (),
    ) -> None:
        """Queue the final response; ``failed_uids`` become (0008,0058) in its data set (C-MOVE/C-GET).

        ``offending`` become the Offending Element (0000,0901) (PS3.7 9.1.2.1.6).
        """
        if self.finished:
            self.log.warn("a second final response ignored")
            return
        self.finished = True
        data = identifier
        if data is None and failed_uids and self.verb != "find":
            data = encode_failed_uids(tuple(failed_uids), self.transfer_syntax)
        assert self.slot.stream is not None
        self.slot.stream.append((self._command(status, data is not None, counts, error_comment, tuple(offending)), data))
        self.slot.done = True
        self._service._qr_finished(self)

    def writable(self) -> "Deferred[None]":
        """Fires when more responses may be sent without growing the write buffer (:meth:`StorageService.writable`)."""
        return self._service.writable()

    def store(self, path: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset_offset: int) -> "Deferred[int]":
        """C-GET: a C-STORE sub-operation of this Part 10 file on the requester's association (PS3.4 C.4.3.3).

        See :meth:`StorageService.store_sub_operation`.
        """
        return self._service.store_sub_operation(path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, dataset_offset)

    def abort(self, detail: str) -> None:
        """A-ABORT the requester's association (issue 16: a C-GET sub-operation's C-STORE-RSP never came, PS3.8 7.3.1 / 9.2.2).

        Every open request on it is cancelled and the waiting C-STOREs fail, as when the peer aborts.
        """
        self._service._protocol_violation(detail)

    # -- the service's side ----------------------------------------------------------------

    @property
    def context(self) -> AcceptedContext:
        """The request's presentation context."""
        return self._context

    def cancel(self) -> None:
        """Fire :attr:`cancelled` (once)."""
        if not self._cancelled.called:
            self._cancelled.callback(None)

    def _command(self, status: int, has_dataset: bool, counts: Any, error_comment: str, offending: tuple[int, ...] = ()) -> bytes:
        """The encoded C-FIND/C-MOVE/C-GET-RSP (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2)."""
        rq = self.request
        elements: dict[int, bytes] = {dimse.Tag.STATUS: dimse._enc_us(status)}
        if rq.affected_sop_class_uid:
            try:
                elements[dimse.Tag.AFFECTED_SOP_CLASS_UID] = dimse._enc_ui(rq.affected_sop_class_uid)
            except ValueError:
                pass  # U(=) in every Q/R response: left out rather than unencodable
        if offending:
            # PS3.7 9.1.2.1.6 (C-FIND), 9.1.3.1 / 9.1.4.1 (C-GET, C-MOVE): AT, 1-n.
            elements[dimse.Tag.OFFENDING_ELEMENT] = dimse._enc_at(offending)
        if error_comment:
            elements[dimse.Tag.ERROR_COMMENT] = dimse._enc_lo(error_comment)
        if counts is not None and self.verb != "find":
            if counts.remaining is not None:
                elements[_REMAINING] = dimse._enc_us(min(counts.remaining, 0xFFFF))
            elements[_COMPLETED] = dimse._enc_us(min(counts.completed, 0xFFFF))
            elements[_FAILED] = dimse._enc_us(min(counts.failed, 0xFFFF))
            elements[_WARNING] = dimse._enc_us(min(counts.warning, 0xFFFF))
        return dimse.encode_command(dimse.UnknownCommand(rq.command_field | 0x8000, rq.message_id, elements, has_dataset))
