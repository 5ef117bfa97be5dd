"""The Twisted requestor: open an association to a remote AE and use it as an SCU.

:func:`connect_tcp` connects, sends an A-ASSOCIATE-RQ and fires with a
:class:`ClientAssociation` once the acceptor answers AC (or fails with
:class:`AssociationRejected`). The association then offers :meth:`echo`
(C-ECHO), :meth:`store` (C-STORE of a Part 10 file, streamed from disk in
fragments sized to the peer's maximum PDU length, PS3.8 D.1; over plain TCP
on Linux each fragment goes from the file to the socket with ``os.sendfile``,
see :class:`_FileSender`), :meth:`n_action` and :meth:`n_event_report`
(DIMSE-N with a small in-memory data set, for Storage Commitment: the
gateway asks an archive to commit, and reports to a modality as SCP, PS3.4
J.3), :meth:`release` and :meth:`abort`.

Query/Retrieve (issue 16): :meth:`ClientAssociation.find`,
:meth:`~ClientAssociation.move` and :meth:`~ClientAssociation.get` send a
C-FIND/C-MOVE/C-GET-RQ with its identifier and return a :class:`QRStream`
at once: an async iterator of the responses as they arrive (PS3.7 9.1.2-9.1.4:
pending responses, then one final), with :meth:`QRStream.cancel` sending
C-CANCEL-RQ (PS3.7 9.3.2.3). The DIMSE timeout applies to each response,
not to the whole operation. A slow consumer pauses the transport (TCP
backpressure reaches the source) instead of buffering the result set. For
C-GET the source sends its C-STORE-RQ sub-operations on the same
association (we proposed the SCP role for the storage classes, PS3.4
C.4.3.3, PS3.7 D.3.3.4); each is handed to a :class:`StoreSink` the caller
creates per instance (:class:`FileStoreSink` writes a Part 10 file), and
answered with the status its ``close`` returns.

One request may come the other way: an archive that commits may send its
N-EVENT-REPORT-RQ on the association that carried our N-ACTION while it is
still open (PS3.4 J.3.3, "on the same or a new association"). The caller
installs a handler with :meth:`ClientAssociation.on_event_report`; the
requestor gathers the data set (bounded by :data:`MAX_EVENT_REPORT_DATASET`),
calls it, and answers N-EVENT-REPORT-RSP with the status it returns (0x0110
without a handler or when it fails, PS3.7 10.1.1.1.8). Any other request
from the acceptor is still a protocol violation (A-ABORT).

For the report, the gateway is association requestor *and* Storage
Commitment SCP, so the request carries an SCP/SCU Role Selection item with
SCU-role 0 and SCP-role 1 (PS3.4 J.3.3.1.3, PS3.7 D.3.3.4):
:func:`connect_tcp` and :func:`gateway.send.dicom.connect_dicom` take
``role_selections``, and :func:`~gateway.ul.negotiate.accepted_from_ac`
keeps a context only when the acceptor granted a role we proposed.

Outstanding requests are kept in a ``{message_id: (Deferred, timeout)}`` map
in the style of ``twisted.names.dns.DNSMixin``: each waits for its response
for the DIMSE timeout, after which the association is aborted (the peer is
then in an unknown state, and PS3.7 gives no way to cancel a C-STORE).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Protocol as TypingProtocol, Sequence, Union

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.dimse import commands as dimse
from gateway.dimse.errors import DIMSEProtocolError
from gateway.dimse.pdv import CommandComplete, DatasetFragment, Reassembler, fragment, fragment_command, max_fragment_size
from gateway.dimse.identifier import decode_identifier, encode_identifier
from gateway.dimse.status import Status, StatusCategory, category
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.meta import Part10Header, encode_file_meta, read_part10_header
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from gateway.ul import pdu as _pdu
from gateway.ul.actions import Role, ULSettings
from gateway.ul.items import SCPSCURoleSelection, SOPClassExtendedNegotiation
from gateway.tls import describe_tls_failure
from gateway.ul.association import Association
from gateway.ul.negotiate import AcceptedContext, accepted_from_ac, build_request
from gateway.tcp import quickack, set_no_delay
from gateway.ul.outputs import (
    AbortIndication,
    AssociateAccepted,
    AssociateRejected,
    CloseTransport,
    Output,
    PDataIndication,
    ReleaseConfirm,
    ReleaseIndication,
    Send,
    StartArtim,
    StopArtim,
)

#: The largest PDV data we ever put in one P-DATA-TF, whatever the peer allows.
SEND_CAP = 1024 * 1024

#: Bytes of data set one pull sends straight from the file (zero-copy) before
#: handing back to the reactor, so one fast peer cannot starve the others.
DIRECT_BUDGET = 4 * 1024 * 1024

#: The largest N-EVENT-REPORT-RQ data set accepted on our association
#: (HARDENING R4): a report naming :data:`gateway.dimse.commitment.MAX_REFERENCES`
#: instances is about 13 MB.
MAX_EVENT_REPORT_DATASET = 32 * 1024 * 1024

#: Handles an N-EVENT-REPORT-RQ received on our association: the request, its
#: context, its data set bytes -> the status to answer (or a Deferred of it).
EventReportHandler = Callable[[dimse.NEventReportRQ, AcceptedContext, bytes], "int | Deferred[int]"]

#: The largest identifier accepted in one C-FIND/C-MOVE/C-GET response (a
#: match, or a Failed SOP Instance UID List; HARDENING R4).
MAX_RESPONSE_IDENTIFIER = 4 * 1024 * 1024

#: Responses a :class:`QRStream` holds for a slow consumer before the
#: transport is paused (TCP backpressure to the source); it resumes below half.
QR_HIGH_WATER = 32

#: A Query/Retrieve response command.
QRCommand = Union[dimse.CFindRSP, dimse.CMoveRSP, dimse.CGetRSP]


@dataclass(frozen=True)
class QRResponse:
    """One C-FIND/C-MOVE/C-GET response as it arrived (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2).

    :ivar command: the response command (status, counts, error comment).
    :ivar identifier: the data set that followed it (a C-FIND match, or a
        Failed SOP Instance UID List), or ``None``.
    :ivar transfer_syntax: the context's transfer syntax, the identifier's encoding.
    """

    command: QRCommand
    identifier: bytes | None
    transfer_syntax: str

    @property
    def status(self) -> int:
        """(0000,0900)."""
        return int(self.command.status)

    @property
    def pending(self) -> bool:
        """Whether more responses follow (0xFF00/0xFF01, PS3.7 C.2)."""
        return category(self.status) is StatusCategory.PENDING

    def dataset(self, convert: bool = True) -> Any:
        """The identifier decoded with :func:`gateway.dimse.identifier.decode_identifier` (a pydicom Dataset).

        :param convert: passed on: false leaves values to pydicom's lazy
            conversion (about a quarter of the cost, for reading a few keys).
        :raises ValueError: when there is no identifier.
        :raises gateway.dimse.identifier.IdentifierError: when it is malformed.
        """
        if self.identifier is None:
            raise ValueError("response has no identifier")
        return decode_identifier(self.identifier, self.transfer_syntax, convert=convert)


class StoreSink(TypingProtocol):
    """Where one C-GET sub-operation's data set goes (created per C-STORE-RQ by the caller)."""

    def write(self, data: bytes) -> None:
        """One fragment of the data set, in order."""

    def close(self) -> "int | Deferred[int]":
        """The data set is complete; returns the C-STORE status to answer (PS3.4 B.2.3)."""

    def discard(self) -> None:
        """The association ended before the data set was complete."""


#: Creates the sink of one incoming C-STORE-RQ (a C-GET sub-operation).
OnStore = Callable[[dimse.CStoreRQ, AcceptedContext], StoreSink]


class FileStoreSink:
    """A :class:`StoreSink` writing a Part 10 file (PS3.10 7.1): meta, then the data set as received.

    :param path: the file to write (created, truncated).
    :param rq: the C-STORE-RQ (SOP class and instance for the meta).
    :param context: its presentation context (the data set's transfer syntax).
    :param stored: called with the path and the data set's offset once the
        file is complete and closed; returns the C-STORE status (or a
        Deferred of it).
    :param source_ae_title: (0002,0016) Source AE Title, the source's AE.
    """

    def __init__(
        self,
        path: str,
        rq: dimse.CStoreRQ,
        context: AcceptedContext,
        stored: Callable[[str, int], "int | Deferred[int]"],
        source_ae_title: str | None = None,
    ) -> None:
        self.path = path
        meta = encode_file_meta(
            sop_class_uid=rq.affected_sop_class_uid,
            sop_instance_uid=rq.affected_sop_instance_uid,
            transfer_syntax_uid=context.transfer_syntax,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            source_ae_title=source_ae_title,
        )
        self.dataset_offset = len(meta)
        self._stored = stored
        self._fp: BinaryIO | None = open(path, "wb")
        self._fp.write(meta)

    def write(self, data: bytes) -> None:
        """Append a fragment."""
        if self._fp is not None:
            self._fp.write(data)

    def close(self) -> "int | Deferred[int]":
        """Close the file and hand it over."""
        if self._fp is not None:
            self._fp.close()
            self._fp = None
        return self._stored(self.path, self.dataset_offset)

    def discard(self) -> None:
        """Close and remove the partial file."""
        if self._fp is not None:
            self._fp.close()
            self._fp = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class QRStream:
    """The responses to one C-FIND, C-MOVE or C-GET request, as they arrive.

    Iterate with ``async for response in stream`` (or call :meth:`next`,
    which fires with ``None`` after the final response). The iteration ends
    after the final response; it raises :class:`AssociationAborted` when the
    association ends first, or when no response came within the DIMSE
    timeout (which is counted per response). :attr:`final` fires with the
    final response, for callers that only want the outcome.

    :ivar message_id: the request's Message ID.
    :ivar context: the presentation context it went on.
    :ivar on_store: for C-GET, the factory of the sub-operations' sinks.
    """

    def __init__(
        self,
        protocol: "RequestorProtocol",
        context: AcceptedContext,
        message_id: int,
        expected: type,
        on_store: OnStore | None = None,
    ) -> None:
        self._protocol = protocol
        self.context = context
        self.message_id = message_id
        self.expected = expected
        self.on_store = on_store
        self.final: Deferred[QRResponse] = Deferred()
        self._queue: deque[QRResponse] = deque()
        self._waiting: Deferred[QRResponse | None] | None = None
        self._error: Exception | None = None
        self._ended = False  # final delivered or error
        self._delivered_final = False
        self._cancel_sent = False
        self.paused = False
        self.timer: IDelayedCall | None = None

    @property
    def transfer_syntax(self) -> str:
        """The context's transfer syntax (identifiers are encoded in it)."""
        return self.context.transfer_syntax

    @property
    def done(self) -> bool:
        """Whether the final response arrived or the stream failed."""
        return self._ended

    def __aiter__(self) -> "QRStream":
        """The stream is its own async iterator."""
        return self

    async def __anext__(self) -> QRResponse:
        """The next response; ``StopAsyncIteration`` after the final one."""
        response = await self.next()
        if response is None:
            raise StopAsyncIteration
        return response

    def next(self) -> "Deferred[QRResponse | None]":
        """The next response, ``None`` after the final one.

        :raises AssociationAborted: (through the Deferred) when the stream failed.
        """
        if self._waiting is not None:
            raise RuntimeError("next() called again before the previous response arrived")
        if self._queue:
            response = self._queue.popleft()
            if self.paused and len(self._queue) <= QR_HIGH_WATER // 2:
                self._protocol.resume_stream(self)
            return succeed(response)
        if self._error is not None:
            return fail(self._error)
        if self._delivered_final:
            return succeed(None)
        self._waiting = Deferred()
        return self._waiting

    def cancel(self) -> None:
        """Send C-CANCEL-RQ for this request (PS3.7 9.3.2.3), once, if it is still running.

        The final response (normally 0xFE00, Cancel) still comes through the stream.
        """
        if self._ended or self._cancel_sent:
            return
        self._cancel_sent = True
        self._protocol.send_cancel(self)
        if self.paused:
            # Only the final response is still due: read again, so that it
            # arrives even if the consumer stops reading the pending ones.
            self._protocol.resume_stream(self)

    # -- fed by the protocol --------------------------------------------------------------

    def deliver(self, response: QRResponse) -> None:
        """A response arrived (its identifier complete)."""
        if not response.pending:
            self._ended = True
            self._delivered_final = True
            self.final.callback(response)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(response)
        else:
            self._queue.append(response)
            if len(self._queue) >= QR_HIGH_WATER and not self.paused and not self._ended:
                self._protocol.pause_stream(self)

    def fail(self, error: Exception) -> None:
        """The association ended, or the timeout passed, before the final response."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self.final.errback(error)
        self.final.addErrback(lambda _: None)  # the iterator reports it
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(error)


#: The headers of a P-DATA-TF PDU holding one PDV (PS3.8 9.3.5, Table 9-22,
#: and 9.3.5.1, Table 9-23): PDU type 04H, reserved, PDU length; PDV item
#: length, presentation context ID, message control header.
_PDATA_HEADER = struct.Struct(">BBIIBB")


def zero_copy_socket(transport: Any) -> socket.socket | None:
    """The socket a data set may be sent to with ``os.sendfile``, or ``None``.

    Only a plain TCP connection of the reactor (``twisted.internet.tcp``) on
    a system with ``sendfile`` and ``MSG_MORE`` (Linux): a TLS transport
    encrypts in Python, and a test's transport has no socket.

    :param transport: the protocol's transport.
    :returns: its socket, or ``None`` to keep the buffered path.
    """
    if not hasattr(os, "sendfile") or not hasattr(socket, "MSG_MORE"):
        return None
    from twisted.internet import tcp

    if type(transport) not in (tcp.Client, tcp.Server) or getattr(transport, "TLS", False):
        return None
    if not all(hasattr(transport, name) for name in ("_tempDataLen", "dataBuffer", "offset", "disconnecting")):
        return None  # another Twisted's buffer: :func:`_drained` cannot see it
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


def _drained(transport: Any) -> bool:
    """Whether nothing is waiting in the transport's own buffer (``twisted.internet.abstract.FileDescriptor``).

    Bytes written straight to the socket are in order only when Twisted holds
    none of its own, so a direct send starts only then.
    """
    return bool(not transport._tempDataLen and len(transport.dataBuffer) <= transport.offset)


class AssociationError(Exception):
    """Base class of requestor-side failures."""


class AssociationRejected(AssociationError):
    """The acceptor answered A-ASSOCIATE-RJ (PS3.8 9.3.4)."""

    def __init__(self, rejection: _pdu.AAssociateRJ) -> None:
        super().__init__(
            f"association rejected: result {rejection.result}, source {rejection.source}, reason {rejection.reason}"
        )
        self.rejection = rejection


class AssociationAborted(AssociationError):
    """The association ended abnormally (A-ABORT, transport closed, or a timeout).

    :ivar data_sent: for a failed C-STORE, whether the data set's last
        fragment had gone out (the destination may then hold the instance:
        an ambiguous outcome, HARDENING F06/F07); ``None`` when not known.
    """

    data_sent: bool | None = None


class NoPresentationContext(AssociationError):
    """No accepted presentation context fits the instance's SOP class and transfer syntax."""


@dataclass(frozen=True)
class StoreResult:
    """The outcome of one C-STORE as the peer reported it (PS3.7 9.3.1.2)."""

    status: int
    sop_class_uid: str
    sop_instance_uid: str
    size: int
    error_comment: str | None = None


def proposals_for_files(paths: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Presentation contexts to propose for sending ``paths``: one per (SOP class, transfer syntax).

    :returns: ``[(abstract_syntax, [transfer_syntax]), ...]``, at most 128 (PS3.8 9.3.2.2: odd IDs 1-255).
    """
    seen: dict[tuple[str, str], None] = {}
    for path in paths:
        header = read_part10_header(path)
        seen[(header.sop_class_uid, header.transfer_syntax_uid)] = None
    proposals = [(sop, [ts]) for sop, ts in seen]
    if len(proposals) > 128:
        raise ValueError("more than 128 SOP class / transfer syntax pairs; send in several associations")
    return proposals


@implementer(IPullProducer)
class _FileSender:
    """Streams one data set from a file as P-DATA-TF PDUs, one pull at a time (PS3.8 9.3.5).

    Two ways out, chosen per pull:

    * **buffered**: read a few fragments, build each PDU in memory and write
      it through the transport (TLS, tests, a transport that still holds
      bytes of its own);
    * **zero-copy** (``sock`` given: plain TCP on Linux, the data set sent
      unchanged): when the transport's buffer is drained, each PDU's 12
      header bytes are sent on the socket with ``MSG_MORE`` and its payload
      with ``os.sendfile`` from the spool file, so the data set never passes
      through Python (issue 13). When the socket's buffer fills (a short
      send, ``EAGAIN``), the rest of that PDU goes through the transport's
      buffer, which orders everything after it, and Twisted calls
      :meth:`resumeProducing` again once it has drained: the producer's
      backpressure is the transport's, as on the buffered path.
    """

    def __init__(
        self,
        protocol: "RequestorProtocol",
        fp: BinaryIO,
        context_id: int,
        size: int,
        fragment: int,
        sock: socket.socket | None = None,
    ) -> None:
        self._protocol = protocol
        self._fp = fp
        self._context_id = context_id
        self._remaining = size
        self._fragment = fragment
        self._sock = sock
        self.done: Deferred[None] = Deferred()

    def resumeProducing(self) -> None:
        """Send the next fragments; unregister after the last one."""
        if self._remaining <= 0:
            return
        if self._sock is not None:
            transport: Any = self._protocol.transport
            if transport.disconnecting:
                # An abort or a close is under way: nothing more goes out.
                self._finish(AssociationAborted("association ended while sending"))
                return
            if _drained(transport):
                self._send_direct(transport, self._sock)
            # Else Twisted calls again when its buffer has drained.
            return
        # A few fragments per pull keeps syscall overhead low without buffering much.
        for _ in range(4):
            if not self._send_buffered():
                return

    def _send_buffered(self) -> bool:
        """Read, build and write one PDU through the transport; false when finished or failed."""
        chunk = self._fp.read(min(self._fragment, self._remaining))
        if not chunk:
            self._finish(AssociationAborted("file shrank while sending"))
            return False
        self._remaining -= len(chunk)
        control = 0x02 if self._remaining == 0 else 0x00
        if not self._protocol.send_encoded(_pdu.pdata_pdu(self._context_id, control, chunk)):
            self._finish(AssociationAborted("association ended while sending"))
            return False
        if self._remaining == 0:
            self._finish(None)
            return False
        return True

    def _send_direct(self, transport: Any, sock: socket.socket) -> None:
        """Send PDUs straight from the file to the socket until done, the socket is full, or the budget is spent."""
        budget = DIRECT_BUDGET
        file_fd = self._fp.fileno()
        while self._remaining > 0:
            if not self._protocol.association.is_established:
                self._finish(AssociationAborted("association ended while sending"))
                return
            if budget <= 0:
                # Hand back to the reactor: one PDU through the transport's
                # buffer, and Twisted calls again once it has drained.
                self._send_buffered()
                return
            n = min(self._fragment, self._remaining)
            control = 0x02 if n == self._remaining else 0x00
            header = _PDATA_HEADER.pack(_pdu.PDUType.P_DATA_TF, 0, n + _pdu.PDV_HEADER_LENGTH, n + 2, self._context_id, control)
            offset = self._fp.tell()
            put = sent = 0
            blocked = False
            try:
                # MSG_MORE: the header waits in the kernel for the payload
                # (TCP_NODELAY is on), so they leave in the same segments.
                put = sock.send(header, socket.MSG_MORE)
                if put == len(header):
                    sent = os.sendfile(sock.fileno(), file_fd, offset, n)
            except BlockingIOError:
                blocked = True
            except OSError as e:
                self._finish(AssociationAborted(f"transport error while sending: {e}"))
                return
            if put == len(header) and sent == 0 and not blocked and self._at_end_of_file(offset):
                self._finish(AssociationAborted("file shrank while sending"))
                return
            budget -= sent
            if put < len(header) or sent < n:
                # The socket is full: the rest of this PDU through the transport's buffer.
                self._fp.seek(offset + sent)
                rest = self._fp.read(n - sent)
                if len(rest) < n - sent:
                    self._finish(AssociationAborted("file shrank while sending"))
                    return
                transport.write(header[put:] + rest)
                self._remaining -= n
                if self._remaining == 0:
                    self._finish(None)
                return
            self._fp.seek(offset + n)
            self._remaining -= n
        self._finish(None)

    def _at_end_of_file(self, offset: int) -> bool:
        """Whether the file ends at ``offset`` (``sendfile`` sent nothing and raised nothing)."""
        return os.fstat(self._fp.fileno()).st_size <= offset

    def stopProducing(self) -> None:
        """The transport went away."""
        self._finish(AssociationAborted("transport closed while sending"))

    def _finish(self, error: Exception | None) -> None:
        if self.done.called:
            return
        self._fp.close()
        self._protocol.transport.unregisterProducer()
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)


class RequestorProtocol(Protocol):
    """Our side of an outbound association: an adapter around the sans-IO core."""

    log = Logger(namespace="gateway.associate")

    def __init__(
        self,
        request: _pdu.AAssociateRQ,
        clock: IReactorTime,
        timeout: float,
        max_pdu_length: int,
        dimse_timeout: float | None = None,
    ) -> None:
        self._request = request
        self._clock = clock
        self._acse_timeout = timeout
        self._timeout = dimse_timeout if dimse_timeout is not None else timeout
        self.association = Association(
            Role.REQUESTOR, ULSettings(artim_timeout=timeout, max_pdu_length=max_pdu_length)
        )
        self.established: Deferred[ClientAssociation] = Deferred()
        self._artim: IDelayedCall | None = None
        self._acse: IDelayedCall | None = None
        self._reassembler = Reassembler()
        self._pending: dict[int, tuple[Deferred[Any], IDelayedCall | None]] = {}
        self._released: Deferred[None] | None = None
        self.client: ClientAssociation | None = None
        self.closed = False
        #: Set by :meth:`ClientAssociation.on_event_report`.
        self.event_report_handler: EventReportHandler | None = None
        # An N-EVENT-REPORT-RQ whose data set is arriving: request, context, fragments, size.
        self._incoming: tuple[dimse.NEventReportRQ, AcceptedContext, list[bytes], int] | None = None
        #: Q/R requests in progress, by Message ID.
        self._streams: dict[int, QRStream] = {}
        # A Q/R response whose identifier is arriving: stream, command, fragments, size.
        self._qr_incoming: tuple[QRStream, QRCommand, list[bytes], int] | None = None
        # A C-GET sub-operation's C-STORE-RQ whose data set is arriving: the
        # request, its context, the stream, the sink (None: swallowed).
        self._store_incoming: tuple[dimse.CStoreRQ, AcceptedContext, QRStream | None, StoreSink | None] | None = None

    def connectionMade(self) -> None:
        """Evt1 then Evt2: send the A-ASSOCIATE-RQ, and wait at most the ACSE timeout."""
        set_no_delay(self.transport)
        self._run(self.association.request(self._request))
        self._run(self.association.transport_connected())
        self._acse = self._clock.callLater(self._acse_timeout, self._acse_expired)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the acceptor."""
        quickack(self.transport)
        self._run(self.association.receive_data(data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Evt17, and fail whatever still waits."""
        self.closed = True
        # A TLS failure (unknown CA, wrong name) ends the connection before
        # any PDU; say so, so the queue's last error and the log name it.
        self._tls_failure = describe_tls_failure(reason.value if reason is not None else None)
        self._run(self.association.transport_closed())
        for call in (self._artim, self._acse):
            if call is not None and call.active():
                call.cancel()
        self._fail_all(AssociationAborted(self._tls_failure or "transport connection closed"))
        if self._released is not None and not self._released.called:
            self._released.callback(None)

    def _acse_expired(self) -> None:
        self._acse = None
        if not self.established.called:
            self._run(self.association.abort(detail="ACSE timeout"))
            self.transport.loseConnection()
            self.established.errback(AssociationAborted("no A-ASSOCIATE response within the ACSE timeout"))

    def _run(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self.transport.write(out.data)
            elif isinstance(out, StartArtim):
                if self._artim is not None and self._artim.active():
                    self._artim.cancel()
                self._artim = self._clock.callLater(out.seconds, self._artim_fired)
            elif isinstance(out, StopArtim):
                if self._artim is not None and self._artim.active():
                    self._artim.cancel()
                self._artim = None
            elif isinstance(out, CloseTransport):
                self.transport.loseConnection()
            elif isinstance(out, AssociateAccepted):
                self._accepted(out.response)
            elif isinstance(out, AssociateRejected):
                self._cancel_acse()
                self.established.errback(AssociationRejected(out.response))
            elif isinstance(out, PDataIndication):
                self._pdata(out.pdvs)
            elif isinstance(out, ReleaseConfirm):
                if self._released is not None and not self._released.called:
                    self._released.callback(None)
            elif isinstance(out, ReleaseIndication):
                # The acceptor asked to release (or a collision): agree.
                self._run(self.association.release_response())
            elif isinstance(out, AbortIndication):
                tls_failure = getattr(self, "_tls_failure", None)
                self._fail_all(AssociationAborted(tls_failure or out.detail or f"aborted ({out.source}, {out.reason})"))
                if not self.established.called:
                    self._cancel_acse()
                    self.established.errback(AssociationAborted(tls_failure or out.detail or "aborted"))

    def _artim_fired(self) -> None:
        self._artim = None
        self._run(self.association.artim_expired())

    def _cancel_acse(self) -> None:
        if self._acse is not None and self._acse.active():
            self._acse.cancel()
        self._acse = None

    def _accepted(self, ac: _pdu.AAssociateAC) -> None:
        self._cancel_acse()
        negotiated = accepted_from_ac(self._request, ac)
        self.client = ClientAssociation(self, negotiated.contexts, negotiated.peer_max_pdu)
        if ac.user_information is not None:
            # PS3.7 D.3.3.5: the acceptor's SOP Class Extended Negotiation replies, first per class.
            for item in ac.user_information.extended_negotiations:
                self.client.extended_replies.setdefault(item.sop_class_uid, item.application_information)
        self.established.callback(self.client)

    def _pdata(self, pdvs: Sequence[_pdu.PDV]) -> None:
        for pdv in pdvs:
            try:
                events = self._reassembler.feed(pdv)
            except DIMSEProtocolError as e:
                self.abort(str(e))
                return
            for event in events:
                if isinstance(event, CommandComplete):
                    command = event.command
                    if isinstance(command, dimse.NEventReportRQ):
                        self._event_report_begins(event.context_id, command)
                    elif isinstance(command, dimse.CStoreRQ):
                        self._store_begins(event.context_id, command)
                    elif getattr(command, "message_id_being_responded_to", None) in self._streams:
                        self._stream_response(command)
                    else:
                        self._response(command)
                elif isinstance(event, DatasetFragment):
                    if self._incoming is not None:
                        self._event_report_fragment(event)
                    elif self._qr_incoming is not None:
                        self._stream_fragment(event)
                    elif self._store_incoming is not None:
                        self._store_fragment(event)
                    # Other data set fragments belong to a response's reply
                    # (none is expected for the services we use) and are dropped.

    def _event_report_begins(self, context_id: int, rq: dimse.NEventReportRQ) -> None:
        """An N-EVENT-REPORT-RQ from the acceptor (PS3.4 J.3.3): gather its data set, or handle it now."""
        context = self.client.contexts.get(context_id) if self.client is not None else None
        if context is None:
            self.abort(f"N-EVENT-REPORT-RQ on unaccepted presentation context {context_id}")
            return
        if rq.has_dataset:
            self._incoming = (rq, context, [], 0)
        else:
            self._event_report_dispatch(rq, context, b"")

    def _event_report_fragment(self, event: DatasetFragment) -> None:
        """One fragment of the incoming report's data set, bounded (HARDENING R4)."""
        assert self._incoming is not None
        rq, context, parts, size = self._incoming
        size += len(event.data)
        if size > MAX_EVENT_REPORT_DATASET:
            self._incoming = None
            self.abort(f"N-EVENT-REPORT-RQ data set over {MAX_EVENT_REPORT_DATASET} bytes")
            return
        parts.append(event.data)
        self._incoming = (rq, context, parts, size)
        if event.last:
            self._incoming = None
            self._event_report_dispatch(rq, context, b"".join(parts))

    def _event_report_dispatch(self, rq: dimse.NEventReportRQ, context: AcceptedContext, data: bytes) -> None:
        """Call the handler and answer with its status; 0x0110 without one or when it fails (PS3.7 10.1.1.1.8)."""
        handler = self.event_report_handler
        if handler is None:
            self._event_report_answer(rq, context, int(Status.PROCESSING_FAILURE), "no handler for N-EVENT-REPORT")
            return

        def failed(failure: Failure) -> None:
            self.log.failure("N-EVENT-REPORT handler failed", failure)
            self._event_report_answer(rq, context, int(Status.PROCESSING_FAILURE), "cannot process the report")

        d = maybeDeferred(handler, rq, context, data)
        d.addCallbacks(lambda status: self._event_report_answer(rq, context, int(status)), failed)

    def _event_report_answer(self, rq: dimse.NEventReportRQ, context: AcceptedContext, status: int, comment: str = "") -> None:
        """Send the N-EVENT-REPORT-RSP (PS3.7 10.3.1.2), if the association is still up."""
        if not self.association.is_established or self.client is None:
            return
        response = dimse.encode_command(dimse.event_report_response(rq, status, comment))
        self.send_command(context.context_id, response, self.client.peer_max_pdu)

    # -- Query/Retrieve streams (issue 16) --------------------------------------------------

    def add_stream(self, stream: QRStream) -> None:
        """Register a Q/R request whose responses go to ``stream``."""
        self._streams[stream.message_id] = stream

    def arm_stream(self, stream: QRStream) -> None:
        """(Re)start the DIMSE timeout of ``stream``: it counts per response (PS3.7 9.1.2-9.1.4)."""
        self._disarm_stream(stream)
        if not stream.done and not stream.paused:
            stream.timer = self._clock.callLater(self._timeout, self._dimse_timeout, stream.message_id)

    def _disarm_stream(self, stream: QRStream) -> None:
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.timer = None

    def pause_stream(self, stream: QRStream) -> None:
        """The consumer is behind: stop reading (backpressure), and stop its timeout meanwhile."""
        stream.paused = True
        self._disarm_stream(stream)
        self.transport.pauseProducing()

    def resume_stream(self, stream: QRStream) -> None:
        """The consumer caught up: read again."""
        stream.paused = False
        if not any(other.paused for other in self._streams.values()):
            self.transport.resumeProducing()
        self.arm_stream(stream)

    def send_cancel(self, stream: QRStream) -> None:
        """C-CANCEL-RQ for ``stream``'s request, on its context (PS3.7 9.3.2.3)."""
        if not self.association.is_established or self.client is None:
            return
        command = dimse.encode_command(dimse.CCancelRQ(stream.message_id))
        self.send_command(stream.context.context_id, command, self.client.peer_max_pdu)

    def _stream_response(self, command: dimse.Command) -> None:
        """A response to a Q/R request: deliver it, or gather its identifier first."""
        stream = self._streams[command.message_id_being_responded_to]  # type: ignore[union-attr]
        if not isinstance(command, stream.expected):
            self.abort(f"{type(command).__name__} answering {stream.expected.__name__[:-3]}-RQ {stream.message_id}")
            return
        self._disarm_stream(stream)
        if command.has_dataset:
            self._qr_incoming = (stream, command, [], 0)
        else:
            self._stream_deliver(stream, command, None)

    def _stream_fragment(self, event: DatasetFragment) -> None:
        """One fragment of a Q/R response's identifier, bounded (HARDENING R4)."""
        assert self._qr_incoming is not None
        stream, command, parts, size = self._qr_incoming
        size += len(event.data)
        if size > MAX_RESPONSE_IDENTIFIER:
            self._qr_incoming = None
            self.abort(f"response identifier over {MAX_RESPONSE_IDENTIFIER} bytes")
            return
        parts.append(bytes(event.data))
        self._qr_incoming = (stream, command, parts, size)
        if event.last:
            self._qr_incoming = None
            self._stream_deliver(stream, command, b"".join(parts))

    def _stream_deliver(self, stream: QRStream, command: QRCommand, identifier: bytes | None) -> None:
        response = QRResponse(command, identifier, stream.transfer_syntax)
        if not response.pending:
            self._streams.pop(stream.message_id, None)
        stream.deliver(response)
        self.arm_stream(stream)

    def _store_begins(self, context_id: int, rq: dimse.CStoreRQ) -> None:
        """A C-STORE-RQ from the source: a C-GET sub-operation (PS3.4 C.4.3.3) for the C-GET in progress."""
        context = self.client.contexts.get(context_id) if self.client is not None else None
        if context is None:
            self.abort(f"C-STORE-RQ on unaccepted presentation context {context_id}")
            return
        stream = next((s for s in self._streams.values() if s.on_store is not None), None)
        if stream is None:
            # No C-GET in progress: a request from the acceptor we never
            # invited, a protocol violation as before issue 16.
            self.abort(f"unexpected C-STORE-RQ {rq.message_id} with no C-GET in progress")
            return
        sink: StoreSink | None = None
        if stream is not None:
            # The source works for us meanwhile: no timeout until we answer.
            self._disarm_stream(stream)
            assert stream.on_store is not None
            try:
                sink = stream.on_store(rq, context)
            except Exception:  # the caller's factory (e.g. no disk): answer a failure
                self.log.failure("C-GET sub-operation sink failed")
                sink = None
        if not rq.has_dataset:
            if sink is not None:
                sink.discard()
            self._store_answer(rq, context, stream, int(Status.CANNOT_UNDERSTAND), "C-STORE-RQ without a data set")
            return
        self._store_incoming = (rq, context, stream, sink)

    def _store_fragment(self, event: DatasetFragment) -> None:
        """One fragment of a sub-operation's data set, streamed to its sink."""
        assert self._store_incoming is not None
        rq, context, stream, sink = self._store_incoming
        if sink is not None:
            try:
                sink.write(bytes(event.data))
            except OSError:
                self.log.failure("C-GET sub-operation write failed")
                sink.discard()
                sink = None
                self._store_incoming = (rq, context, stream, None)
        if not event.last:
            return
        self._store_incoming = None
        if sink is None:
            # PS3.4 B.2.3: refused, out of resources (no handler, or it failed).
            self._store_answer(rq, context, stream, int(Status.OUT_OF_RESOURCES), "cannot store the sub-operation")
            return

        def failed(failure: Failure) -> None:
            self.log.failure("C-GET sub-operation store failed", failure)
            self._store_answer(rq, context, stream, int(Status.OUT_OF_RESOURCES), "cannot store the sub-operation")

        d = maybeDeferred(sink.close)
        d.addCallbacks(lambda status: self._store_answer(rq, context, stream, int(status)), failed)

    def _store_answer(
        self, rq: dimse.CStoreRQ, context: AcceptedContext, stream: QRStream | None, status: int, comment: str = ""
    ) -> None:
        """Send the C-STORE-RSP (PS3.7 9.3.1.2) and restart the C-GET's timeout."""
        if not self.association.is_established or self.client is None:
            return
        response = dimse.store_response(rq, status, error_comment=comment or None)
        self.send_command(context.context_id, dimse.encode_command(response), self.client.peer_max_pdu)
        if stream is not None:
            self.arm_stream(stream)

    def _response(self, command: dimse.Command) -> None:
        message_id = getattr(command, "message_id_being_responded_to", None)
        entry = self._pending.pop(message_id, None) if message_id is not None else None
        if entry is None:
            self.abort(f"response to unknown message ID {message_id}")
            return
        d, timeout = entry
        if timeout is not None and timeout.active():
            timeout.cancel()
        d.callback(command)

    def _fail_all(self, error: Exception) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._disarm_stream(stream)
            stream.fail(error)
        self._qr_incoming = None
        store, self._store_incoming = self._store_incoming, None
        if store is not None and store[3] is not None:
            store[3].discard()
        pending, self._pending = self._pending, {}
        for d, timeout in pending.values():
            if timeout is not None and timeout.active():
                timeout.cancel()
            if not d.called:
                d.errback(error)

    # -- used by ClientAssociation --------------------------------------------------------

    def send_encoded(self, data: bytes) -> bool:
        """Send pre-encoded P-DATA-TF bytes; false if the association is no longer established."""
        if not self.association.is_established:
            return False
        self._run(self.association.send_pdata_encoded(data))
        return True

    def send_command(self, context_id: int, command: bytes, peer_max: int) -> None:
        """Send a command set, fragmented to the peer's maximum."""
        for pdv in fragment_command(context_id, command, peer_max):
            self._run(self.association.send_pdata([pdv]))

    def send_dataset(self, context_id: int, data: bytes, peer_max: int) -> None:
        """Send a small in-memory data set, fragmented to the peer's maximum (PS3.8 E.1)."""
        for pdv in fragment(context_id, data, max_fragment_size(peer_max, SEND_CAP), command=False):
            self._run(self.association.send_pdata([pdv]))

    def in_use(self, message_id: int) -> bool:
        """Whether ``message_id`` names a request still waiting for its (final) response."""
        return message_id in self._pending or message_id in self._streams

    def expect_response(self, message_id: int) -> Deferred[Any]:
        """Register a pending request; the DIMSE timeout starts when :meth:`arm_timeout` is called."""
        d: Deferred[Any] = Deferred()
        self._pending[message_id] = (d, None)
        return d

    def arm_timeout(self, message_id: int) -> None:
        """Start the DIMSE timeout for ``message_id`` (after its last fragment went out)."""
        entry = self._pending.get(message_id)
        if entry is not None:
            self._pending[message_id] = (entry[0], self._clock.callLater(self._timeout, self._dimse_timeout, message_id))

    def _dimse_timeout(self, message_id: int) -> None:
        self.log.warn("no DIMSE response to message {message_id} within {timeout}s", message_id=message_id, timeout=self._timeout)
        self.abort("DIMSE timeout")

    def release(self) -> Deferred[None]:
        """Evt11: A-RELEASE request; fires when the acceptor answers (or the connection closes).

        A transport paused for a slow Q/R consumer is resumed first, or the
        A-RELEASE-RP would never be read.
        """
        paused = [stream for stream in self._streams.values() if stream.paused]
        for stream in paused:
            stream.paused = False
            self._disarm_stream(stream)
        if paused:
            self.transport.resumeProducing()
        if self._released is None:
            self._released = Deferred()
            if self.association.state.value == "Sta6":
                self._run(self.association.release())
            else:
                self._released.callback(None)
        return self._released

    def abort(self, detail: str = "") -> None:
        """Evt15: A-ABORT(0,0), then close the transport."""
        self._run(self.association.abort(detail=detail))
        self._fail_all(AssociationAborted(detail or "aborted by us"))
        self.transport.loseConnection()


class ClientAssociation:
    """An established association on which we are the SCU."""

    def __init__(self, protocol: RequestorProtocol, contexts: dict[int, AcceptedContext], peer_max_pdu: int) -> None:
        self._protocol = protocol
        self.contexts = contexts
        self.peer_max_pdu = peer_max_pdu
        self._message_ids = itertools.count(1)
        self._busy: Deferred[Any] = succeed(None)
        #: The acceptor's SOP Class Extended Negotiation replies by SOP class
        #: (PS3.7 D.3.3.5); no entry means not supported.
        self.extended_replies: dict[str, bytes] = {}

    @property
    def is_open(self) -> bool:
        """Whether requests can still be sent."""
        return self._protocol.association.is_established and not self._protocol.closed

    def context_for(self, sop_class_uid: str, transfer_syntax_uid: str) -> AcceptedContext | None:
        """The accepted context for this SOP class in exactly this transfer syntax, if any."""
        for context in self.contexts.values():
            if context.abstract_syntax == sop_class_uid and context.transfer_syntax == transfer_syntax_uid:
                return context
        return None

    def relational_queries(self, sop_class_uid: str) -> bool:
        """Whether the acceptor agreed to relational queries for a C-FIND class (PS3.4 C.5.1.1, byte 1).

        :param sop_class_uid: the FIND SOP class.
        :returns: True only if its extended negotiation reply has byte 1 set to 1.
        """
        reply = self.extended_replies.get(sop_class_uid, b"")
        return reply[:1] == b"\x01"

    def context_for_class(self, sop_class_uid: str) -> AcceptedContext | None:
        """The accepted context of a SOP class, whatever its transfer syntax (lowest ID first).

        A DIMSE-N caller encodes its data set in the returned context's
        ``transfer_syntax`` (e.g. with :mod:`gateway.dimse.commitment`).
        Contexts where the acceptor granted no role we proposed are already
        left out (:func:`~gateway.ul.negotiate.accepted_from_ac`).

        :param sop_class_uid: the abstract syntax.
        :returns: the context, or ``None`` when none was accepted.
        """
        matches = [c for c in self.contexts.values() if c.abstract_syntax == sop_class_uid]
        return min(matches, key=lambda c: c.context_id) if matches else None

    def _next_id(self) -> int:
        """A Message ID not in use on this association (PS3.7 9.1.1.1.1: unique among outstanding requests)."""
        for _ in range(0x10000):
            candidate = next(self._message_ids) & 0xFFFF
            if candidate and not self._protocol.in_use(candidate):
                return candidate
        raise AssociationError("no free Message ID")

    # -- Query/Retrieve (issue 16) ------------------------------------------------------------

    def _qr_request(
        self,
        sop_class_uid: str,
        make: Callable[[int], dimse.Command],
        expected: type,
        identifier: Any,
        message_id: int | None,
        on_store: OnStore | None = None,
    ) -> QRStream:
        """Send a C-FIND/C-MOVE/C-GET-RQ and its identifier; return the stream of its responses.

        :param identifier: bytes already in the context's transfer syntax,
            or a pydicom Dataset, encoded here.
        """
        context = self._context_or_raise(sop_class_uid)
        if message_id is None:
            message_id = self._next_id()
        elif not 0 < message_id <= 0xFFFF or self._protocol.in_use(message_id):
            raise ValueError(f"Message ID {message_id} is invalid or in use on this association")
        data = identifier if isinstance(identifier, (bytes, bytearray)) else encode_identifier(identifier, context.transfer_syntax)
        stream = QRStream(self._protocol, context, message_id, expected, on_store)
        self._protocol.add_stream(stream)
        self._protocol.send_command(context.context_id, dimse.encode_command(make(message_id)), self.peer_max_pdu)
        # PS3.7 9.1.2.1.4 (and 9.1.3.1.4, 9.1.4.1.5): the Identifier is mandatory.
        self._protocol.send_dataset(context.context_id, bytes(data), self.peer_max_pdu)
        self._protocol.arm_stream(stream)
        return stream

    def find(self, sop_class_uid: str, identifier: Any, *, priority: int = 0, message_id: int | None = None) -> QRStream:
        """C-FIND (PS3.7 9.1.2): send the query; the stream yields each match, then the final response.

        :param sop_class_uid: a FIND SOP class, e.g. Study Root 1.2.840.10008.5.1.4.1.2.2.1.
        :param identifier: the query: bytes in :meth:`context_for_class`'s
            transfer syntax, or a pydicom Dataset.
        :param priority: 0 medium, 1 high, 2 low (PS3.7 9.1.1.1.7).
        :param message_id: a Message ID to use (unique on this association), or ``None``.
        :returns: the responses' stream; :meth:`QRStream.cancel` sends C-CANCEL-RQ.
        :raises NoPresentationContext: when the SOP class was not accepted.
        :raises AssociationAborted: when the association is no longer open.
        """
        return self._qr_request(
            sop_class_uid, lambda mid: dimse.CFindRQ(mid, sop_class_uid, priority), dimse.CFindRSP, identifier, message_id
        )

    def move(
        self,
        sop_class_uid: str,
        destination_ae: str,
        identifier: Any,
        *,
        priority: int = 0,
        message_id: int | None = None,
    ) -> QRStream:
        """C-MOVE (PS3.7 9.1.4): ask the peer to send the instances to ``destination_ae``.

        The stream yields the pending responses with the sub-operation counts
        (``response.command.remaining`` etc.), then the final one (its
        identifier, if any, is the Failed SOP Instance UID List).

        :param sop_class_uid: a MOVE SOP class.
        :param destination_ae: (0000,0600) Move Destination, e.g. the gateway's own AE title.
        :param identifier: bytes or a pydicom Dataset, as for :meth:`find`.
        :param priority: 0 medium, 1 high, 2 low.
        :param message_id: a Message ID to use, e.g. one the journal allocated
            so that the sub-operations' Move Originator Message ID (0000,1031)
            names this move across the cluster; ``None`` for the next free one.
        :returns: the responses' stream.
        :raises NoPresentationContext: when the SOP class was not accepted.
        :raises AssociationAborted: when the association is no longer open.
        :raises ValueError: when ``message_id`` is outside 1..65535 or in use.
        """
        return self._qr_request(
            sop_class_uid,
            lambda mid: dimse.CMoveRQ(mid, sop_class_uid, destination_ae, priority),
            dimse.CMoveRSP,
            identifier,
            message_id,
        )

    def get(
        self,
        sop_class_uid: str,
        identifier: Any,
        on_store: OnStore,
        *,
        priority: int = 0,
        message_id: int | None = None,
    ) -> QRStream:
        """C-GET (PS3.7 9.1.3): the peer sends the instances back on this association as C-STORE-RQs.

        Propose the SCP role for the storage classes expected (role
        selection, SCU-role 0 / SCP-role 1, PS3.4 C.4.3.3, PS3.7 D.3.3.4)
        when connecting. Each sub-operation's data set goes to the sink
        ``on_store(rq, context)`` returns, and is answered with the status of
        the sink's ``close`` (0xA700 when the factory or the sink fails).

        :param sop_class_uid: a GET SOP class.
        :param identifier: bytes or a pydicom Dataset, as for :meth:`find`.
        :param on_store: creates the sink of each incoming C-STORE-RQ.
        :param priority: 0 medium, 1 high, 2 low.
        :param message_id: a Message ID to use, or ``None``.
        :returns: the responses' stream (pending counts, then the final).
        :raises NoPresentationContext: when the SOP class was not accepted.
        :raises AssociationAborted: when the association is no longer open.
        """
        return self._qr_request(
            sop_class_uid,
            lambda mid: dimse.CGetRQ(mid, sop_class_uid, priority),
            dimse.CGetRSP,
            identifier,
            message_id,
            on_store,
        )

    async def n_action(
        self, sop_class_uid: str, sop_instance_uid: str, action_type_id: int, dataset: bytes
    ) -> dimse.NActionRSP:
        """N-ACTION (PS3.7 10.1.4) with an Action Information data set; returns the response.

        :param sop_class_uid: the Requested SOP Class UID, e.g. Storage Commitment Push Model.
        :param sop_instance_uid: the Requested SOP Instance UID, e.g. its well-known instance.
        :param action_type_id: e.g. 1, Request Storage Commitment (PS3.4 Table J.3-1).
        :param dataset: the Action Information, already encoded in
            :meth:`context_for_class`'s ``transfer_syntax``; empty for none.
        :returns: the N-ACTION-RSP (its status is the caller's to judge).
        :raises NoPresentationContext: when the SOP class was not accepted.
        :raises AssociationAborted: when the association ends, or the DIMSE
            timeout passes, before the response, or the peer answers with
            another kind of message.
        """
        context = self._context_or_raise(sop_class_uid)
        message_id = self._next_id()
        rq = dimse.NActionRQ(message_id, sop_class_uid, sop_instance_uid, action_type_id, has_dataset=bool(dataset))
        response = await self._n_request(context, message_id, dimse.encode_command(rq), dataset)
        if not isinstance(response, dimse.NActionRSP):
            self._protocol.abort(f"{type(response).__name__} answering N-ACTION-RQ {message_id}")
            raise AssociationAborted(f"unexpected {type(response).__name__} to N-ACTION-RQ")
        return response

    async def n_event_report(
        self, sop_class_uid: str, sop_instance_uid: str, event_type_id: int, dataset: bytes
    ) -> dimse.NEventReportRSP:
        """N-EVENT-REPORT (PS3.7 10.1.1) with an Event Information data set; returns the response.

        :param sop_class_uid: the Affected SOP Class UID.
        :param sop_instance_uid: the Affected SOP Instance UID.
        :param event_type_id: e.g. 1 (all committed) or 2 (failures exist), PS3.4 Table J.3-2.
        :param dataset: the Event Information, already encoded in
            :meth:`context_for_class`'s ``transfer_syntax``; empty for none.
        :returns: the N-EVENT-REPORT-RSP.
        :raises NoPresentationContext: when the SOP class was not accepted.
        :raises AssociationAborted: as for :meth:`n_action`.
        """
        context = self._context_or_raise(sop_class_uid)
        message_id = self._next_id()
        rq = dimse.NEventReportRQ(message_id, sop_class_uid, sop_instance_uid, event_type_id, has_dataset=bool(dataset))
        response = await self._n_request(context, message_id, dimse.encode_command(rq), dataset)
        if not isinstance(response, dimse.NEventReportRSP):
            self._protocol.abort(f"{type(response).__name__} answering N-EVENT-REPORT-RQ {message_id}")
            raise AssociationAborted(f"unexpected {type(response).__name__} to N-EVENT-REPORT-RQ")
        return response

    def _context_or_raise(self, sop_class_uid: str) -> AcceptedContext:
        """The class's accepted context, on an open association.

        :raises NoPresentationContext: none accepted.
        :raises AssociationAborted: the association is no longer open.
        """
        context = self.context_for_class(sop_class_uid)
        if context is None:
            raise NoPresentationContext(f"no accepted presentation context for {sop_class_uid}")
        if not self.is_open:
            raise AssociationAborted("association is not open")
        return context

    async def _n_request(self, context: AcceptedContext, message_id: int, command: bytes, dataset: bytes) -> Any:
        """Send one request (command, then its data set if any) and await its response.

        The DIMSE timeout starts once the last fragment is out, as for C-STORE.
        """
        d = self._protocol.expect_response(message_id)
        self._protocol.send_command(context.context_id, command, self.peer_max_pdu)
        if dataset:
            self._protocol.send_dataset(context.context_id, dataset, self.peer_max_pdu)
        self._protocol.arm_timeout(message_id)
        return await d

    async def echo(self) -> int:
        """C-ECHO (PS3.7 9.1.5); returns the status."""
        context = next((c for c in self.contexts.values() if c.abstract_syntax == VERIFICATION_SOP_CLASS), None)
        if context is None:
            raise NoPresentationContext("Verification was not accepted")
        message_id = self._next_id()
        d = self._protocol.expect_response(message_id)
        self._protocol.send_command(
            context.context_id, dimse.encode_command(dimse.CEchoRQ(message_id, VERIFICATION_SOP_CLASS)), self.peer_max_pdu
        )
        self._protocol.arm_timeout(message_id)
        response = await d
        return int(response.status)

    async def store(self, path: str, header: Part10Header | None = None, zero_copy: bool = True) -> StoreResult:
        """C-STORE the Part 10 file at ``path`` (PS3.7 9.1.1), streaming its data set from disk.

        :param path: the file.
        :param header: its meta, when the caller has read it already (the
            sender reads every entry's before choosing an association); read
            here when ``None``.
        :param zero_copy: send the data set with ``os.sendfile`` when the
            transport allows it (plain TCP on Linux, :func:`zero_copy_socket`);
            false keeps every byte on the buffered path.
        :raises NoPresentationContext: when no accepted context carries its SOP class in its transfer syntax.
        :raises AssociationAborted: when the association ends before the response.
        :raises FileNotFoundError: the file is gone (nothing was sent).
        """
        if header is None:
            header = read_part10_header(path)
        context = self.context_for(header.sop_class_uid, header.transfer_syntax_uid)
        if context is None:
            raise NoPresentationContext(
                f"no accepted presentation context for {header.sop_class_uid} in {header.transfer_syntax_uid}"
            )
        if not self.is_open:
            raise AssociationAborted("association is not open")
        # Opened before the command goes out: a missing file (the header may
        # come from the journal, not from reading it) fails with nothing sent.
        fp = open(path, "rb")
        fp.seek(header.dataset_offset)
        message_id = self._next_id()
        rq = dimse.CStoreRQ(message_id, header.sop_class_uid, header.sop_instance_uid)
        d = self._protocol.expect_response(message_id)
        self._protocol.send_command(context.context_id, dimse.encode_command(rq), self.peer_max_pdu)
        sender = _FileSender(
            self._protocol,
            fp,
            context.context_id,
            header.size,
            max_fragment_size(self.peer_max_pdu, SEND_CAP),
            zero_copy_socket(self._protocol.transport) if zero_copy else None,
        )
        self._protocol.transport.registerProducer(sender, False)
        try:
            await sender.done
        except AssociationAborted as e:
            d.addErrback(lambda _: None)  # the same abort fails the response too
            e.data_sent = False
            raise
        self._protocol.arm_timeout(message_id)
        try:
            response = await d
        except AssociationAborted as e:
            # The last fragment went out: the peer may have stored it (ambiguous).
            e.data_sent = True
            raise
        return StoreResult(
            status=int(response.status),
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid,
            size=header.size,
            error_comment=getattr(response, "error_comment", None),
        )

    def on_event_report(self, handler: EventReportHandler | None) -> None:
        """Handle N-EVENT-REPORT-RQs the acceptor sends on this association (PS3.4 J.3.3).

        :param handler: called with the request, its context and its whole
            data set (in the context's transfer syntax); it returns the status
            to answer, or a Deferred of it. ``None`` answers 0x0110.
        """
        self._protocol.event_report_handler = handler

    def release(self) -> Deferred[None]:
        """A-RELEASE; fires when released."""
        return self._protocol.release()

    def abort(self) -> None:
        """A-ABORT and close."""
        self._protocol.abort()


class _QuietFactory(Factory):
    """A client factory that hands out one protocol and logs nothing (one per association)."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        """The prepared protocol."""
        return self._protocol


def open_association(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    request: _pdu.AAssociateRQ,
    *,
    acse_timeout: float,
    dimse_timeout: float,
    max_pdu_length: int,
) -> Deferred[ClientAssociation]:
    """Connect ``endpoint`` and negotiate ``request``.

    :param acse_timeout: seconds to wait for the A-ASSOCIATE answer (and for release).
    :param dimse_timeout: seconds to wait for each DIMSE response.
    :returns: a Deferred firing with the :class:`ClientAssociation`, or failing with
        :class:`AssociationRejected` / :class:`AssociationAborted` / a connection error.
    """
    protocol = RequestorProtocol(request, reactor, acse_timeout, max_pdu_length, dimse_timeout=dimse_timeout)
    connecting = endpoint.connect(_QuietFactory(protocol))
    return connecting.addCallback(lambda _: protocol.established)


def connect_tcp(
    reactor: Any,
    host: str,
    port: int,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    proposals: Sequence[tuple[str, Sequence[str]]] | None,
    max_pdu_length: int = 262144,
    timeout: float = 30.0,
    role_selections: Sequence[SCPSCURoleSelection] = (),
    extended_negotiations: Sequence[SOPClassExtendedNegotiation] = (),
) -> Deferred[ClientAssociation]:
    """Connect to ``host:port`` and negotiate an association.

    :param proposals: ``[(abstract_syntax, [transfer_syntaxes])]``; Verification is always added.
    :param role_selections: SCP/SCU Role Selection items to propose (PS3.7
        D.3.3.4), e.g. SCU-role 0 and SCP-role 1 for Storage Commitment when
        we send the report (PS3.4 J.3.3.1.3).
    :param extended_negotiations: SOP Class Extended Negotiation items (PS3.7
        D.3.3.5); the replies are in :attr:`ClientAssociation.extended_replies`.
    :returns: a Deferred firing with the :class:`ClientAssociation`, or failing with
        :class:`AssociationRejected` / :class:`AssociationAborted` / a connection error.
    """
    wanted = list(proposals or [])
    if not any(sop == VERIFICATION_SOP_CLASS for sop, _ in wanted):
        wanted.insert(0, (VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE, EXPLICIT_VR_LE]))
    request = build_request(
        calling_ae_title,
        called_ae_title,
        wanted,
        max_pdu_length=max_pdu_length,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        role_selections=role_selections,
        extended_negotiations=extended_negotiations,
    )
    if ":" in host:
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return open_association(
        reactor, endpoint, request, acse_timeout=timeout, dimse_timeout=timeout, max_pdu_length=max_pdu_length
    )
