"""The Twisted acceptor: a thin adapter between TCP and the sans-IO upper layer.

:class:`AcceptorProtocol` feeds every byte it receives to an
:class:`~gateway.ul.association.Association` and carries out the outputs it
returns (``_run`` is the only place where outputs touch the world, as in
``twisted.web._http2``). It owns the three timers of an acceptor: ARTIM
(PS3.8 9.1.5, armed and cancelled by the machine's outputs), the network idle
timeout, and the write timeout; DIMSE work is the :class:`~gateway.receive.StorageService`'s.

Outbound data is bounded (HARDENING P35): the protocol registers itself as a
streaming producer of its own transport, so when the transport's write buffer
fills (a peer that sends requests but never reads our responses) Twisted
calls :meth:`AcceptorProtocol.pauseProducing`; we then stop reading, so the
peer gets no more responses to queue, and arm the write timeout
(``network_timeout``).  If the buffer has not drained when it fires, the
connection is aborted (``abortConnection``: a FIN could never be delivered
through a closed window).  Because Twisted does not close a transport whose
registered producer is paused, every close unregisters the producer first.

:class:`AcceptorFactory` holds what every connection of one listener shares:
settings, the access policy, the spool, the clock, and the count of live
associations behind the ``max_associations`` limit (PS3.8 9.1.4: we answer
A-ASSOCIATE-RJ transient, local limit exceeded, rather than resetting TCP).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import events
from gateway.access import AccessPolicy, Peer
from gateway.dimse.pdv import DEFAULT_SEND_CAP, fragment, fragment_command, max_fragment_size
from gateway.identity_check import BUSY_REJECTION, IDENTITY_REJECTION, IdentityOutcome, Verdict
from gateway.receive import Admit, AssociationInfo, ICommitmentSCP, IQueryRetrieveSCP, StorageService
from gateway.spool import Spool
from gateway.tcp import quickack, set_no_delay
from gateway.tls import transport_peer_identity
from gateway.ul import pdu as _pdu
from gateway.ul.actions import Role, ULSettings
from gateway.ul.association import Association
from gateway.ul.errors import AbortReason, AbortSource, RejectResult, RejectSource
from gateway.ul.errors import RejectReasonPresentation
from gateway.ul.items import UserIdentityAC
from gateway.ul.machine import State
from gateway.ul.negotiate import AcceptorSettings, Negotiation, check_acse, negotiate_acceptor, relational_granted
from gateway.ul.outputs import (
    AbortIndication,
    AssociateIndication,
    CloseTransport,
    Output,
    PDataIndication,
    ReleaseIndication,
    Send,
    StartArtim,
    StopArtim,
)

_ids = itertools.count(1)

#: Seconds an RJ(2,3,2) for a full passcode pool is held before it is sent (a
#: client looping on wrong passcodes then costs a timer, not a connection flood).
BUSY_HOLD = 1.0
#: At most this many such answers are held per listener; beyond, they go out at once.
BUSY_HOLD_MAX = 64

#: A user identity decision that did not come within ``acse_timeout``:
#: rejected-transient, service-provider (presentation), temporary congestion (PS3.8 Table 9-21).
IDENTITY_TIMEOUT_REJECTION = _pdu.AAssociateRJ(
    result=RejectResult.TRANSIENT,
    source=RejectSource.SERVICE_PROVIDER_PRESENTATION,
    reason=RejectReasonPresentation.TEMPORARY_CONGESTION,
)


def printable(text: str) -> str:
    """Escape a peer-supplied string for a log line (HARDENING P10: no control or non-ASCII bytes in logs)."""
    return "".join(c if " " <= c <= "~" and c != "\\" else f"\\x{ord(c):02x}" for c in text)


@dataclass(frozen=True)
class AcceptorLimits:
    """Per-listener limits, from the ``limits`` block of the configuration."""

    max_associations: int = 64
    acse_timeout: float = 30.0
    network_timeout: float = 120.0


class AcceptorProtocol(Protocol):
    """One inbound transport connection, and the association it may carry."""

    log = Logger(namespace="gateway.listen")

    def __init__(self, factory: "AcceptorFactory") -> None:
        self.factory = factory
        self._clock = factory.clock
        self.association = Association(Role.ACCEPTOR, factory.ul_settings)
        self.assoc_id = f"A{next(_ids)}"
        self._artim: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._grace: IDelayedCall | None = None
        # Write timeout, armed while the transport's write buffer is full (P35).
        self._write_stall: IDelayedCall | None = None
        # Why reading is paused: the spool catching up, a full write buffer, or both.
        self._paused_for_spool = False
        self._paused_for_writes = False
        self._producing = False
        #: Waiters for the connection's end (``None`` once it has ended).
        self._lost: list[Deferred[None]] | None = []
        self._service: StorageService | None = None
        self._negotiation: Negotiation | None = None
        # The bound on the wait for a user identity decision (Sta3).
        self._deciding: IDelayedCall | None = None
        self._decision_late = False
        # A held RJ(2,3,2) (the passcode pool was full).
        self._busy: IDelayedCall | None = None
        self._subject: str | None = None
        self._counted = False
        self._started = 0.0
        self._peer = "?"
        self._ending = "closed"
        self._calling = ""
        self._called = ""
        #: C-GET sub-operation data sets being streamed from files (issue 16).
        self._file_streams: list[_FileStream] = []

    # -- Twisted callbacks -----------------------------------------------------------------

    def connectionMade(self) -> None:
        """Evt5: a transport connection was accepted."""
        self._started = self._clock.seconds()
        peer = self.transport.getPeer()
        self._peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        set_no_delay(self.transport)
        # HARDENING P35: be told when our own write buffer fills and drains.
        self.transport.registerProducer(self, True)
        self._producing = True
        self.factory.connections.add(self)
        self._reset_idle()
        self._run(self.association.transport_connected())

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer: feed them to the upper layer."""
        quickack(self.transport)
        self._reset_idle()
        self._run(self.association.receive_data(data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Evt17: the transport closed."""
        self._run(self.association.transport_closed())
        if self._busy is not None and self._busy.active():
            self._busy.cancel()
            self.factory.busy_held -= 1
        self._busy = None
        for call in (self._artim, self._idle, self._grace, self._write_stall, self._deciding):
            if call is not None and call.active():
                call.cancel()
        self._artim = self._idle = self._grace = self._write_stall = self._deciding = None
        waiters, self._lost = self._lost or [], None
        for waiter in waiters:
            waiter.callback(None)
        if self._service is not None:
            self._service.connection_lost()
        self.factory.connections.discard(self)
        if self._counted:
            self._counted = False
            self.factory.active -= 1
            self.factory.observer.observe(events.AssociationEnded(self.factory.name, self._calling, self._ending == "released"))
        if self._calling or self._ending != "closed":
            self._log_end()

    # -- the only place outputs touch the world --------------------------------------------

    def _run(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self.transport.write(out.data)
            elif isinstance(out, StartArtim):
                self._cancel_artim()
                self._artim = self._clock.callLater(out.seconds, self._artim_fired)
            elif isinstance(out, StopArtim):
                self._cancel_artim()
            elif isinstance(out, CloseTransport):
                self._lose_connection()
            elif isinstance(out, AssociateIndication):
                self._associate(out.request)
            elif isinstance(out, PDataIndication):
                if self._service is not None:
                    self._service.pdata(out.pdvs)
            elif isinstance(out, ReleaseIndication):
                self._ending = "released"
                if self._service is not None:
                    self._service.release_requested()
                else:
                    self._run(self.association.release_response())
            elif isinstance(out, AbortIndication):
                self._aborted(out)

    def _cancel_artim(self) -> None:
        if self._artim is not None and self._artim.active():
            self._artim.cancel()
        self._artim = None

    def _artim_fired(self) -> None:
        self._artim = None
        if self.association.state.value == "Sta2":
            self.factory.artim_expired += 1
            self.factory.observer.observe(events.ArtimExpired(self.factory.name))
            self._ending = "ARTIM expired before A-ASSOCIATE-RQ"
        self._run(self.association.artim_expired())

    def _reset_idle(self) -> None:
        timeout = self.factory.limits.network_timeout
        if timeout <= 0:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self._clock.callLater(timeout, self._idle_fired)

    def _idle_fired(self) -> None:
        """No PDU for the network timeout: A-ABORT(0,0) and close (HARDENING P34)."""
        self._idle = None
        self._ending = "idle timeout"
        self._run(self.association.abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED, "idle timeout"))
        self._lose_connection()

    # -- association establishment ---------------------------------------------------------

    def _associate(self, request: _pdu.AAssociateRQ) -> None:
        """A-ASSOCIATE indication: apply the access policy, then the user identity policy, then answer.

        The association waits in Sta3 (awaiting the local A-ASSOCIATE
        response, PS3.8 Table 9-10) while a passcode check runs on the
        passcode pool or a verifier plugin answers; the machine already
        aborts on any PDU the peer sends meanwhile (AA-8) and ends on a
        close (AA-4). The wait is bounded by ``acse_timeout``: a decision
        that has not come by then is answered with A-ASSOCIATE-RJ transient
        (2, 3, 1), temporary congestion.
        """
        self._calling = request.calling_ae_title
        self._called = request.called_ae_title
        # Issue 5: the access rules see the peer's address and verified
        # certificate identity (TLS listeners), not only the AE titles.
        identity = transport_peer_identity(self.transport)
        subject = identity.subject if identity is not None else None
        self._subject = subject
        host = getattr(self.transport.getPeer(), "host", None)
        peer = Peer(
            address=host,
            certificate_subject=subject,
            certificate_issuer=identity.issuer if identity is not None else None,
        )
        judge = getattr(self.factory.access, "judge", None)
        if judge is not None:
            rejection, why = judge(request, peer)
        else:
            rejection, why = self.factory.access.check(request, peer), "rejected by the access policy"
        if rejection is not None or self.factory.user_identity is None:
            self._answer(request, subject, rejection, why, None, "", label="access")
            return
        # PS3.7 D.3.3.7: the decision may have to wait for scrypt or a plugin.
        decision = self.factory.user_identity.decide(request)
        if not decision.called:
            self._deciding = self._clock.callLater(self.factory.limits.acse_timeout, self._decision_timed_out, request)
        decision.addCallbacks(
            lambda outcome: self._identity_decided(request, subject, outcome),
            lambda failure: self._identity_failed(request, subject, failure),
        )

    def _decision_timed_out(self, request: _pdu.AAssociateRQ) -> None:
        """The user identity decision took longer than ``acse_timeout``: RJ(2,3,1), and its late answer is ignored."""
        self._deciding = None
        self._decision_late = True
        if self.association.state is not State.STA3:
            return
        self._answer(request, self._subject, IDENTITY_TIMEOUT_REJECTION, "user identity not decided within the ACSE timeout",
                     None, "", label="identity")

    def _identity_failed(self, request: _pdu.AAssociateRQ, subject: str | None, failure: Failure) -> None:
        """An unexpected error deciding: refuse as a failed identity (never accept on an error)."""
        self.log.failure("{assoc_id} user identity check failed", failure, assoc_id=self.assoc_id)
        self._identity_decided(
            request, subject, IdentityOutcome(IDENTITY_REJECTION, None, Verdict(False, "", "internal error"), 0)
        )

    def _identity_decided(self, request: _pdu.AAssociateRQ, subject: str | None, outcome: IdentityOutcome) -> None:
        """The user identity outcome is known: audit it (HARDENING decision 7: every case) and answer."""
        if self._deciding is not None and self._deciding.active():
            self._deciding.cancel()
        self._deciding = None
        if self._decision_late:
            # Answered already with RJ(2,3,1); this outcome came too late.
            return
        username = ""
        if outcome.verdict is not None:
            username = outcome.verdict.username
            self.factory.observer.observe(
                events.UserAuthenticated(
                    listener=self.factory.name,
                    peer=self._peer,
                    calling_ae_title=request.calling_ae_title,
                    username=username,
                    identity_type=outcome.identity_type,
                    success=outcome.rejection is None,
                    description=outcome.verdict.reason,
                )
            )
        if self.association.state is not State.STA3:
            return
        why = ""
        if outcome.rejection is not None:
            why = f"user identity refused: {outcome.verdict.reason if outcome.verdict else 'invalid'}"
        if outcome.rejection == BUSY_REJECTION and self.factory.busy_held < BUSY_HOLD_MAX:
            # The passcode pool is full. Answering RJ(2,3,2) at once would let
            # a client that loops turn the refusal into a connection flood
            # that costs the reactor more than scrypt would; so the answer is
            # held for BUSY_HOLD seconds (a timer, no work), for at most
            # BUSY_HOLD_MAX associations per listener at a time.
            self.factory.busy_held += 1
            self._busy = self._clock.callLater(
                BUSY_HOLD, self._busy_answer, request, subject, outcome.rejection, why
            )
            return
        self._answer(request, subject, outcome.rejection, why, outcome.ac_item, username, label="identity")

    def _busy_answer(self, request: _pdu.AAssociateRQ, subject: str | None, rejection: _pdu.AAssociateRJ, why: str) -> None:
        """The held RJ(2,3,2) goes out now (unless the peer left meanwhile)."""
        self._busy = None
        self.factory.busy_held -= 1
        if self.association.state is State.STA3:
            self._answer(request, subject, rejection, why, None, "", label="identity")

    def _answer(
        self,
        request: _pdu.AAssociateRQ,
        subject: str | None,
        rejection: _pdu.AAssociateRJ | None,
        why: str,
        user_ac: UserIdentityAC | None,
        username: str,
        label: str = "access",
    ) -> None:
        """The A-ASSOCIATE response primitive: reject (Evt8) or negotiate and accept (Evt7).

        :param label: the ``associations_rejected_total`` reason of a rejection
            (HARDENING P16): ``access`` or ``identity`` here.
        """
        if rejection is not None:
            self._ending = f"rejected ({rejection.result},{rejection.source},{rejection.reason})"
            self.factory.rejected += 1
            self.log.info(
                "{assoc_id} association from {peer} {calling} -> {called} rejected: {why}",
                assoc_id=self.assoc_id,
                peer=self._peer,
                calling=printable(request.calling_ae_title),
                called=printable(request.called_ae_title),
                why=why,
            )
            self.factory.observer.observe(
                events.AssociationRejected(
                    listener=self.factory.name,
                    calling_ae_title=request.calling_ae_title,
                    called_ae_title=request.called_ae_title,
                    peer=self._peer,
                    label=label,
                    reason=why,
                    rejection=(rejection.result, rejection.source, rejection.reason),
                    certificate_subject=subject or "",
                )
            )
            self._run(self.association.reject(rejection))
            return
        negotiation = negotiate_acceptor(request, self.factory.acceptor_settings, user_ac)
        self._negotiation = negotiation
        self._counted = True
        self.factory.active += 1
        self.factory.observer.observe(
            events.AssociationAccepted(
                listener=self.factory.name,
                calling_ae_title=request.calling_ae_title,
                called_ae_title=request.called_ae_title,
                peer=self._peer,
                certificate_subject=subject or "",
                username=username,
            )
        )
        self._ending = "open"
        info = AssociationInfo(
            assoc_id=self.assoc_id,
            peer_address=self._peer,
            calling_ae_title=request.calling_ae_title,
            called_ae_title=request.called_ae_title,
            listener=self.factory.name,
            contexts=negotiation.contexts,
            listener_port=getattr(self.transport.getHost(), "port", 0),
            tls_subject=subject or "",
            # PS3.4 C.5.1.1: what the C-FIND handler may accept as relational.
            relational_queries=relational_granted(negotiation.ac),
        )
        self._service = StorageService(
            self,
            info,
            self.factory.spool,
            self.factory.observer,
            admit=self.factory.admit,
            space_low=self.factory.space_low,
            commitment=self.factory.commitment,
            qr=self.factory.qr,
        )
        self._run(self.association.accept(negotiation.ac))
        peer_max = request.user_information.max_length if request.user_information else None
        if peer_max is None:
            self.log.info(
                "{assoc_id} peer sent no Maximum Length sub-item; sending P-DATA of at most 16 KiB",
                assoc_id=self.assoc_id,
            )
        self.log.info(
            "{assoc_id} association from {peer} {calling} -> {called}: {accepted}/{proposed} contexts accepted",
            assoc_id=self.assoc_id,
            peer=self._peer,
            calling=printable(request.calling_ae_title),
            called=printable(request.called_ae_title),
            accepted=len(negotiation.contexts),
            proposed=len(request.presentation_contexts),
        )

    def _aborted(self, indication: AbortIndication) -> None:
        if indication.local:
            self._ending = f"aborted by us ({indication.detail})"
            if indication.source == AbortSource.SERVICE_PROVIDER:
                # The peer sent a PDU we could not accept (HARDENING P37: every such end is counted).
                self.factory.observer.observe(events.PduProtocolError(self.factory.name, indication.reason))
        elif indication.source is None:
            if self._ending in ("open", "closed"):
                self._ending = "transport closed by peer"
        else:
            self._ending = f"aborted by peer (source {indication.source}, reason {indication.reason})"
        if self._service is not None:
            self._service.connection_lost()
        for stream in list(self._file_streams):
            stream.fail(ConnectionDone("the association ended while sending a C-GET sub-operation"))

    def _log_end(self) -> None:
        service = self._service
        self.log.info(
            "{assoc_id} association from {peer} {calling} -> {called} ended: {how}; "
            "{ok} instances stored, {failed} failed, {duration:.3f}s",
            assoc_id=self.assoc_id,
            peer=self._peer,
            calling=printable(self._calling),
            called=printable(self._called),
            how=self._ending,
            ok=service.instances_ok if service else 0,
            failed=service.instances_failed if service else 0,
            duration=self._clock.seconds() - self._started,
        )

    # -- IDIMSEPeer, for the StorageService ------------------------------------------------

    def send_command(self, context_id: int, command: bytes) -> None:
        """Send a DIMSE command set, fragmented to the peer's maximum PDU length."""
        if not self.association.is_established:
            return
        assert self._negotiation is not None
        for pdv in fragment_command(context_id, command, self._negotiation.peer_max_pdu):
            self._run(self.association.send_pdata([pdv]))

    def send_dataset(self, context_id: int, data: bytes) -> None:
        """Send a small data set (a Storage Commitment report), fragmented to the peer's maximum PDU length."""
        if not self.association.is_established:
            return
        assert self._negotiation is not None
        size = max_fragment_size(self._negotiation.peer_max_pdu, DEFAULT_SEND_CAP)
        for pdv in fragment(context_id, data, size, command=False):
            self._run(self.association.send_pdata([pdv]))

    def send_file(self, context_id: int, path: str, offset: int) -> "Deferred[None]":
        """Stream a data set from a Part 10 file (its bytes from ``offset``) as P-DATA fragments (C-GET sub-operations, issue 16).

        A few fragments at a time, and none while our write buffer is full
        (HARDENING P35): :meth:`resumeProducing` pumps again, so memory does not
        grow with the instance. Fires once the last fragment is written; fails
        when the association ends first or the file cannot be read.
        """
        assert self._negotiation is not None
        stream = _FileStream(self, context_id, path, offset, max_fragment_size(self._negotiation.peer_max_pdu, DEFAULT_SEND_CAP))
        self._file_streams.append(stream)
        stream.done.addBoth(lambda result: (self._file_streams.remove(stream), result)[1])
        stream.pump()
        return stream.done

    def release_response(self) -> None:
        """Answer A-RELEASE-RQ now that every response is out (AR-4)."""
        self._run(self.association.release_response())

    def abort_association(self, detail: str) -> None:
        """A-ABORT(0,0) for a DIMSE violation (HARDENING R2), then close."""
        self.factory.observer.observe(events.DimseProtocolError(self.factory.name))
        self._ending = f"aborted by us ({detail})"
        self._run(self.association.abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED, detail))
        self._lose_connection()

    def pause_reading(self) -> None:
        """Stop reading while the spool catches up."""
        self._paused_for_spool = True
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Resume reading (unless the write buffer is still full)."""
        self._paused_for_spool = False
        if not self._paused_for_writes:
            self.transport.resumeProducing()

    # -- IPushProducer, towards our own transport (HARDENING P35) ---------------------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: stop reading and arm the write timeout."""
        if self._paused_for_writes:
            return
        self._paused_for_writes = True
        if self._service is not None:
            # Q/R responses wait too: the sources are no longer read (issue 16).
            self._service.writes_paused()
        self.transport.pauseProducing()
        timeout = self.factory.limits.network_timeout
        if timeout > 0:
            self._write_stall = self._clock.callLater(timeout, self._write_timed_out)

    def resumeProducing(self) -> None:
        """The write buffer drained: disarm the write timeout and read again."""
        if not self._paused_for_writes:
            return
        self._paused_for_writes = False
        if self._write_stall is not None and self._write_stall.active():
            self._write_stall.cancel()
        self._write_stall = None
        for stream in list(self._file_streams):
            stream.pump()
        if self._service is not None:
            self._service.writes_resumed()
        if not self._paused_for_spool:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The transport is going away; :meth:`connectionLost` does the cleanup."""

    def _write_timed_out(self) -> None:
        """The peer has not read our data for ``network_timeout``: abort the connection (P35)."""
        self._write_stall = None
        self._ending = "write timeout (the peer does not read)"
        self.log.warn("{assoc_id} peer {peer} has not read for {timeout}s; aborting",
                      assoc_id=self.assoc_id, peer=self._peer, timeout=self.factory.limits.network_timeout)
        # connectionLost follows at once and discards a partial instance.
        self._unregister_producer()
        self.transport.abortConnection()

    def _unregister_producer(self) -> None:
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _lose_connection(self) -> None:
        """Close after flushing; Twisted never closes while a registered producer is paused."""
        self._unregister_producer()
        self.transport.loseConnection()

    def shutdown(self, grace: float = 0.0) -> Deferred[None]:
        """Stop for a gateway shutdown; fires once the connection is closed.

        An instance being received (or committed) may finish within ``grace``
        seconds: the modality gets its C-STORE-RSP, then the association is
        aborted (an acceptor cannot release, PS3.8 7.2). After ``grace``, or
        at once when nothing is in progress, the association is aborted and a
        partial instance is discarded, never left half-written.
        """
        lost: Deferred[None] = Deferred()
        if self._lost is None:
            lost.callback(None)
            return lost
        self._lost.append(lost)
        service = self._service
        if service is not None and service.busy and grace > 0:
            self._ending = "gateway shutting down (after its in-flight instance)"
            service.on_idle = self._abort_for_shutdown
            self._grace = self._clock.callLater(grace, self._abort_for_shutdown)
        else:
            self._abort_for_shutdown()
        return lost

    def _abort_for_shutdown(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if self._service is not None:
            self._service.on_idle = None
            self._service.connection_lost()
        self._ending = "gateway shutting down"
        self._run(self.association.abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED, "shutdown"))
        self._lose_connection()


class _FileStream:
    """One C-GET sub-operation's data set, read from its file a few fragments at a time (PS3.8 9.3.5)."""

    #: Fragments sent per pump (then the reactor turns, or the write buffer pauses us).
    PER_PUMP = 4

    def __init__(self, protocol: AcceptorProtocol, context_id: int, path: str, offset: int, fragment_size: int) -> None:
        self._protocol = protocol
        self._context_id = context_id
        self._fragment_size = fragment_size
        self.done: Deferred[None] = Deferred()
        self._fp: Any = None
        try:
            self._fp = open(path, "rb")
            self._fp.seek(0, 2)
            self._remaining = self._fp.tell() - offset
            self._fp.seek(offset)
        except OSError as error:
            self._remaining = 0
            self.fail(error)

    def pump(self) -> None:
        """Send fragments until done, the write buffer is full, or this pump's share is spent."""
        if self.done.called or self._fp is None:
            return
        association = self._protocol.association
        sent = 0
        while not self._protocol._paused_for_writes and sent < self.PER_PUMP:
            if not association.is_established:
                self.fail(ConnectionDone("the association ended while sending a C-GET sub-operation"))
                return
            chunk = self._fp.read(min(self._fragment_size, self._remaining)) if self._remaining > 0 else b""
            self._remaining -= len(chunk)
            last = self._remaining <= 0
            if not chunk and not last:
                self.fail(OSError("the file shrank while sending"))
                return
            self._protocol._run(association.send_pdata([_pdu.PDV(self._context_id, 0x02 if last else 0x00, chunk)]))
            sent += 1
            if last:
                self._close()
                self.done.callback(None)
                return
        if not self._protocol._paused_for_writes:
            # Not paused, only this pump's share spent: let the reactor turn, then go on.
            self._protocol._clock.callLater(0, self.pump)

    def fail(self, error: Exception) -> None:
        """Stop, close the file and fail :attr:`done` (once)."""
        self._close()
        if not self.done.called:
            self.done.errback(error)

    def _close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None


class AcceptorFactory(Factory):
    """Builds an :class:`AcceptorProtocol` per connection of one listener.

    :param name: the listener's name, for logs and routing context.
    :param acceptor_settings: what we accept (AE title, SOP classes, transfer syntaxes, PDU sizes).
    :param access: the calling/called AE title policy.
    :param spool: where instances are written.
    :param clock: the reactor's time interface, for every timer.
    :param limits: association count and timeouts.
    :param admit: journals each committed instance before the ack (see :mod:`gateway.intake`).
    :param space_low: true while the spool is below its free-space floor.
    :param store_down: true while the queue store does not answer (issue 14:
        a failed heartbeat, :mod:`gateway.heartbeat`).
    :param observer: told of what happens (:mod:`gateway.events`: associations
        accepted, rejected and ended, user identity outcomes, protocol errors,
        each C-STORE answered); nobody by default. The gateway's fans out to
        metrics and the audit trail.
    :param user_identity: the listener's user identity policy
        (:class:`~gateway.identity_check.UserIdentityChecker`), or ``None``.
    :param refusing: true once a drain's grace is over (:meth:`gateway.drain.Drain.refusing`):
        new associations are then rejected (2,3,2) (issue 14).
    :param commitment: the Storage Commitment SCP each association hands its
        N-ACTION and N-EVENT-REPORT requests to (issue 15), or ``None``.
    :param qr: the Query/Retrieve SCP each association hands its C-FIND,
        C-MOVE and C-GET requests to (issue 16), or ``None``.
    """

    log = Logger(namespace="gateway.listen")

    def __init__(
        self,
        *,
        name: str,
        acceptor_settings: AcceptorSettings,
        access: AccessPolicy,
        spool: Spool,
        clock: IReactorTime,
        limits: AcceptorLimits,
        admit: Admit | None = None,
        space_low: Callable[[], bool] = lambda: False,
        store_down: Callable[[], bool] = lambda: False,
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        user_identity: Any = None,
        refusing: Callable[[], bool] = lambda: False,
        commitment: ICommitmentSCP | None = None,
        qr: IQueryRetrieveSCP | None = None,
    ) -> None:
        self.commitment = commitment
        self.qr = qr
        self.name = name
        self.refusing = refusing
        self.observer = observer
        self.user_identity = user_identity
        self.admit = admit
        self.space_low = space_low
        self.store_down = store_down
        self.acceptor_settings = acceptor_settings
        self.access = access
        self.spool = spool
        self.clock = clock
        self.limits = limits
        self.active = 0
        self.rejected = 0
        #: Associations whose RJ(2,3,2) is being held (see :data:`BUSY_HOLD`).
        self.busy_held = 0
        self.artim_expired = 0
        self.connections: set[AcceptorProtocol] = set()
        self.noisy = False
        self.ul_settings = ULSettings(
            artim_timeout=limits.acse_timeout,
            max_pdu_length=acceptor_settings.max_pdu_length,
            provider_check=self._provider_check,
        )

    def buildProtocol(self, addr: object) -> AcceptorProtocol:
        """A new connection: a new association."""
        return AcceptorProtocol(self)

    def _provider_check(self, request: _pdu.AAssociateRQ) -> _pdu.AAssociateRJ | None:
        """AE-6's service-provider test, with every rejection counted and audited (issue 5: every association is)."""
        refused = self._provider_rejection(request)
        if refused is None:
            return None
        rejection, label = refused
        self.rejected += 1
        self.observer.observe(
            events.AssociationRejected(
                listener=self.name,
                calling_ae_title=request.calling_ae_title,
                called_ae_title=request.called_ae_title,
                peer="",
                label=label,
                reason="rejected: the node is draining" if label == "draining"
                else "rejected by the service provider (ACSE rules, spool space or association limit)",
                rejection=(int(rejection.result), int(rejection.source), int(rejection.reason)),
            )
        )
        return rejection

    def _provider_rejection(self, request: _pdu.AAssociateRQ) -> tuple[_pdu.AAssociateRJ, str] | None:
        """AE-6's service-provider test: ACSE rules first, then the association limit (PS3.8 9.1.4).

        :returns: the rejection and its ``reason`` label (:data:`gateway.observe.REJECT_REASONS`,
            HARDENING P16), or ``None`` to go on. A draining node past its grace
            rejects before the space and count checks (label ``draining``).
        """
        rejection = check_acse(request, self.acceptor_settings)
        if rejection is not None:
            return rejection, "acse"
        if self.refusing():
            # Issue 14: the node is draining and its grace is over. Rejected-transient,
            # local-limit-exceeded (PS3.8 Table 9-21, source 3 reason 2): the modality
            # retries later, by then through the load balancer to another node.
            return _transient(RejectReasonPresentation.LOCAL_LIMIT_EXCEEDED), "draining"
        if self.space_low():
            # The spool is below its free-space floor: temporary congestion
            # (PS3.8 Table 9-21, source 3 reason 1), so the modality retries later.
            return _transient(RejectReasonPresentation.TEMPORARY_CONGESTION), "space"
        if self.store_down():
            # The journal is away (issue 14): nothing could be acknowledged, so
            # the same transient rejection (2,3,1), PS3.8 Table 9-21.
            return _transient(RejectReasonPresentation.TEMPORARY_CONGESTION), "store"
        if self.active >= self.limits.max_associations:
            self.log.warn(
                "rejecting association from {calling}: {active} of {limit} associations in use",
                calling=printable(request.calling_ae_title),
                active=self.active,
                limit=self.limits.max_associations,
            )
            return _transient(RejectReasonPresentation.LOCAL_LIMIT_EXCEEDED), "limit"
        return None


def _transient(reason: RejectReasonPresentation) -> _pdu.AAssociateRJ:
    """A rejected-transient A-ASSOCIATE-RJ from the service provider (presentation), PS3.8 Table 9-21.

    :param reason: temporary congestion (1) or local limit exceeded (2).
    """
    return _pdu.AAssociateRJ(
        result=RejectResult.TRANSIENT, source=RejectSource.SERVICE_PROVIDER_PRESENTATION, reason=reason
    )
