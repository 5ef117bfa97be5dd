"""The sender of an HL7 v2 notification sink: one message per entry over MLLP, ACK checked (issue 18).

For a slot's batch (one slot: the receiver sees the notifications in entry
order) it, for each entry in order:

1. reads the entry's file (:func:`gateway.notify.document.from_json`) on
   the file runner, leaves the patient out when the sink's ``phi`` is false
   (:meth:`~gateway.notify.document.StudyNotification.without_phi`) and
   makes the message (:func:`gateway.notify.hl7.build_message`: the built-in
   ORU^R01 or the sink's template); a missing file is a retry, an unreadable
   one a dead letter of kind ``unreadable``, a message that cannot be made
   one of kind ``other``;
2. makes sure the connection is open: one TCP (or TLS, with the DICOM
   destinations' client context, :func:`gateway.tls.client_creator`)
   connection kept open and reused for every message; opening it (TCP and
   the TLS handshake) is bounded by ``timeout``. A failure to open it is the
   sink's as a whole (:class:`~gateway.queue.outcome.DestinationDown`:
   the circuit takes over, the batch stops);
3. writes the message framed by MLLP (:mod:`gateway.notify.mllp`) and waits
   at most ``timeout`` for one frame back, the acknowledgement; one message
   is in flight at a time;
4. classifies the answer with :func:`gateway.notify.hl7.classify_ack`: AA
   delivered; AE ``on_error``; AR ``on_reject`` (bounded by
   ``reject_retries``, counted from the entry's attempts); no answer within
   ``timeout``, a close, a broken frame, an unreadable ACK or one for another
   message is a retry, *ambiguous* (the receiver may have the message), and
   the connection is dropped: nothing after it can be matched reliably.

The circuit probe is a TCP connect (and the TLS handshake), then a close.
"""

from __future__ import annotations

import time
from typing import Any, AsyncGenerator, Callable, Final, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config.schema import Hl7Sink
from gateway.notify.document import from_json
from gateway.notify.hl7 import AckError, MessageError, Template, build_message, classify_ack, parse_ack
from gateway.notify.mllp import FramingError, MllpDecoder, encode
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.classify import classify_error

__all__ = ["Hl7Sender", "MllpClientProtocol", "ConnectionClosed", "PeerFramingError"]

#: Entries leased at once (one connection, one message at a time).
BATCH_SIZE: Final = 10
#: The largest acknowledgement read (an ACK is a few hundred bytes; ERR segments add some).
MAX_ACK_SIZE: Final = 64 * 1024


class ConnectionClosed(Exception):
    """The connection ended before the acknowledgement came."""


class PeerFramingError(Exception):
    """The receiver broke MLLP framing (or sent a frame nobody asked for)."""


class _TimedOut(Exception):
    """The connection, or the acknowledgement, took longer than the sink's ``timeout``."""


@implementer(IHandshakeListener)
class MllpClientProtocol(Protocol):
    """The gateway's end of one MLLP connection: a thin adapter around :class:`~gateway.notify.mllp.MllpDecoder`.

    :param tls: whether the transport is TLS (then the connection is ready
        once the handshake completes, not when TCP connects).
    :param max_size: the largest frame accepted from the receiver.
    """

    def __init__(self, tls: bool = False, max_size: int = MAX_ACK_SIZE) -> None:
        self.tls = tls
        self.decoder = MllpDecoder(max_size)
        #: Fires when the connection can carry messages; fails if it ends first.
        self.ready: Deferred[None] = Deferred(lambda _: self.abort())
        #: The acknowledgement awaited, if any.
        self._waiting: Deferred[bytes] | None = None
        self.closed = False
        #: Fire (with None) when the connection has ended.
        self._lost: list[Deferred[None]] = []

    # -- Twisted's side ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        """TCP is up: ready now, unless a TLS handshake must finish first."""
        if not self.tls:
            self.ready.callback(None)

    def handshakeCompleted(self) -> None:
        """The TLS handshake completed (the server's certificate verified)."""
        if not self.ready.called:
            self.ready.callback(None)

    def dataReceived(self, data: bytes) -> None:
        """Feed the decoder; hand the awaited frame over; anything else ends the connection."""
        for event in self.decoder.feed(data):
            if isinstance(event, FramingError):
                self._fail(PeerFramingError(event.reason))
                return
            waiting, self._waiting = self._waiting, None
            if waiting is None:
                # HL7 v2.5.1 original mode: one acknowledgement per message, none unasked.
                self._fail(PeerFramingError("a frame came while no acknowledgement was awaited"))
                return
            waiting.callback(event.content)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection ended: fail what waits on it with the reason."""
        self.closed = True
        for lost in self._lost:
            if not lost.called:  # a close given up on (cancelled) has fired already
                lost.callback(None)
        self._lost = []
        if not self.ready.called:
            self.ready.errback(reason)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            cut = " in the middle of a frame" if self.decoder.mid_frame else ""
            waiting.errback(ConnectionClosed(f"connection closed{cut}: {reason.getErrorMessage()}"))

    # -- ours -------------------------------------------------------------------------------

    def exchange(self, message: bytes) -> "Deferred[bytes]":
        """Write one framed message; the Deferred fires with the content of the frame that answers it.

        :param message: the message (unframed).
        :raises RuntimeError: when a message is already in flight (one at a time).
        :raises ConnectionClosed: when the connection has ended.
        :raises gateway.notify.mllp.LocalFramingError: when the message holds <VT> or <FS>.
        """
        if self._waiting is not None:
            raise RuntimeError("an MLLP message is already in flight")
        if self.closed or self.transport is None:
            raise ConnectionClosed("connection closed before sending")
        framed = encode(message)  # LocalFramingError before anything is in flight
        waiting: Deferred[bytes] = Deferred(self._cancel_wait)
        self._waiting = waiting
        self.transport.write(framed)
        return waiting

    def _cancel_wait(self, waiting: "Deferred[bytes]") -> None:
        """The wait was cancelled (timeout, abort): forget it and drop the connection (the ACK can no longer be matched)."""
        if self._waiting is waiting:
            self._waiting = None
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (what is in flight fails as ambiguous)."""
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()

    def close(self) -> "Deferred[None]":
        """Close the connection politely (TLS: after its close_notify).

        :returns: a Deferred firing once the connection has ended.
        """
        lost: Deferred[None] = Deferred()
        if self.transport is None or self.closed:
            lost.callback(None)
            return lost
        self._lost.append(lost)
        self.transport.loseConnection()
        return lost

    def _fail(self, error: Exception) -> None:
        """The receiver misbehaved: fail the waiter with ``error`` and drop the connection."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(error)
        self.abort()


#: Opens one connection: ``connect(protocol)`` fires when TCP is connected.
Connector = Callable[[MllpClientProtocol], "Deferred[Any]"]


class Hl7Sender:
    """MLLP client of one HL7 sink (see the module docstring).

    :param config: the sink.
    :param context: the worker's runner, clock and reactor.
    :param connect: opens a connection for a protocol (tests inject one);
        TCP or TLS to ``config.host``/``port`` through ``context.reactor`` by default.
    :raises gateway.notify.hl7.MessageError: when the sink's template cannot be read or is not valid.
    """

    def __init__(self, config: Hl7Sink, context: SendContext, connect: Connector | None = None) -> None:
        self.config = config
        self.context = context
        self.clock = context.clock
        self.slots = 1
        self.batch_size = BATCH_SIZE
        #: A batch's worst case: every message waits for its connection and its ACK.
        self.lease_seconds = max(600.0, BATCH_SIZE * 2 * config.timeout + 60.0)
        self.template = Template.load(config.template) if config.template else None
        if connect is None:
            if context.reactor is None:
                # DESIGN.md 1.2: the reactor is injected (the service always lends it).
                raise TypeError(f"destination {config.name}: an HL7 sender needs the reactor (SendContext.reactor)")
            connect = self._connect_tcp
        self._connect = connect
        self._protocol: MllpClientProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._max_size = MAX_ACK_SIZE
        self.wall: Callable[[], float] = time.time

    # -- connections ------------------------------------------------------------------------

    def _connect_tcp(self, protocol: MllpClientProtocol) -> "Deferred[Any]":
        """TCP to the receiver, wrapped in TLS when configured (no plain fallback)."""
        reactor = self.context.reactor
        endpoint_type = TCP6ClientEndpoint if ":" in self.config.host else TCP4ClientEndpoint
        endpoint: Any = endpoint_type(reactor, self.config.host, self.config.port, timeout=self.config.timeout)
        if self.config.tls is not None:
            # As the DICOM destinations (PS3.15 Annex B there): the server is verified against
            # the sink's CA and name (RFC 6125); a failure ends the connection before any message.
            from twisted.internet.endpoints import wrapClientTLS

            from gateway.security import client_tls_settings
            from gateway.tls import client_creator

            endpoint = wrapClientTLS(client_creator(client_tls_settings(self.config.tls), self.config.host), endpoint)
        return connectProtocol(endpoint, protocol)

    async def _bounded(self, waiting: "Deferred[Any]", what: str) -> Any:
        """Await ``waiting`` at most ``timeout`` seconds (then cancel it and raise :class:`_TimedOut`)."""
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            waiting.cancel()

        timer = self.clock.callLater(self.config.timeout, expire)
        try:
            return await waiting
        except CancelledError:
            if expired:
                raise _TimedOut(f"no {what} within {self.config.timeout:g}s") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _open(self) -> MllpClientProtocol:
        """A new connection, ready to carry messages (TLS handshake done).

        :raises Exception: whatever prevented it (refused, timeout, TLS).
        """
        protocol = MllpClientProtocol(tls=self.config.tls is not None, max_size=self._max_size)
        self._connecting = self._connect(protocol)
        try:
            await self._bounded(self._connecting, "connection")
        finally:
            self._connecting = None
        await self._bounded(protocol.ready, "TLS handshake" if protocol.tls else "connection")
        return protocol

    def _down(self, exc: BaseException) -> DestinationDown:
        """Why a connection could not be opened: the sink's fault as a whole, a TLS failure described."""
        from gateway.tls import describe_tls_failure
        from gateway.tlslabels import destination_failure_label

        described = describe_tls_failure(exc)
        if described is not None:
            return DestinationDown(described, tls_failure=destination_failure_label(described))
        if isinstance(exc, _TimedOut):
            return DestinationDown(f"HL7: {exc}")
        outcome = classify_error(exc, data_sent=False, connecting=True)
        return outcome if isinstance(outcome, DestinationDown) else DestinationDown(f"HL7: {type(exc).__name__}: {exc}")

    async def _after_a_poll(self) -> None:
        """Let the reactor poll its sockets twice, so a close the receiver sent while idle is read first.

        Otherwise the next message would be written into a closing connection
        and counted as an ambiguous retry (as :meth:`gateway.send.dicom.DicomSender._after_a_poll`).
        """
        for _ in range(2):
            turn: Deferred[None] = Deferred()
            # The reactor's own turns (the sockets it polls), not the timeout clock.
            self.context.reactor.callLater(0, turn.callback, None)
            await turn

    async def _connection(self) -> MllpClientProtocol | DestinationDown:
        """The open connection, reused, or a new one."""
        protocol = self._protocol
        if protocol is not None and not protocol.closed and self.context.reactor is not None:
            await self._after_a_poll()
        if protocol is not None and not protocol.closed:
            return protocol
        self._protocol = None
        try:
            protocol = await self._open()
        except Exception as e:
            return self._down(e)
        self._protocol = protocol
        self.context.reachable()
        return protocol

    def _drop(self) -> None:
        """Abandon the connection (it can no longer be trusted to be in step)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, slot: int, batch: Sequence[Entry]) -> AsyncGenerator[tuple[Entry, Outcome], None]:
        """Send each entry's message in order, one at a time; stop when the sink is down."""
        for entry in batch:
            prepared = await self._prepare(entry)
            if not isinstance(prepared, tuple):
                yield entry, prepared
                continue
            message, ident = prepared
            outcome = await self._exchange(entry, message, ident)
            yield entry, outcome
            if isinstance(outcome, DestinationDown):
                return

    async def _prepare(self, entry: Entry) -> tuple[bytes, str] | Outcome:
        """The message of ``entry`` and its control id, or the outcome that replaces sending it."""
        try:
            data: bytes = await self.context.file_runner.run(_read, entry.path)
        except FileNotFoundError as e:
            return Retry(f"spool file missing: {e}")
        except OSError as e:
            return Retry(f"spool file unreadable: {e}")
        try:
            doc = from_json(data)
        except (ValueError, TypeError, KeyError) as e:
            return DeadLetter(f"unreadable notification document: {type(e).__name__}: {e}", DeadLetterKind.UNREADABLE)
        if not self.config.phi:
            doc = doc.without_phi()
        try:
            return build_message(doc, self.config, self.wall(), self.template)
        except MessageError as e:
            return DeadLetter(f"HL7 message: {e}", DeadLetterKind.OTHER)

    async def _exchange(self, entry: Entry, message: bytes, ident: str) -> Outcome:
        """Send one message on the connection and classify its acknowledgement."""
        connection = await self._connection()
        if isinstance(connection, DestinationDown):
            return connection
        attempts = entry.attempts + 1
        try:
            content = await self._bounded(connection.exchange(message), "acknowledgement")
        except (_TimedOut, ConnectionClosed, PeerFramingError, CancelledError) as e:
            self._drop()
            return classify_ack(None, ident, self.config, attempts, problem=str(e) or type(e).__name__)
        try:
            ack = parse_ack(content)
        except AckError as e:
            self._drop()
            return classify_ack(None, ident, self.config, attempts, problem=str(e))
        if ack.control_id != ident:
            self._drop()
        return classify_ack(ack, ident, self.config, attempts)

    # -- the rest of the Sender interface ---------------------------------------------------

    async def probe(self) -> DestinationDown | None:
        """A TCP connect (and the TLS handshake), then a close: ``None`` when the receiver accepts."""
        try:
            protocol = await self._open()
        except Exception as e:
            return self._down(e)
        await self._close(protocol)
        return None

    async def idle(self, slot: int, now: float) -> float | None:
        """The connection stays open between messages (HL7 receivers expect a long-lived one)."""
        return None

    async def close(self, slot: int) -> None:
        """Close the connection."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            await self._close(protocol)

    async def _close(self, protocol: MllpClientProtocol) -> None:
        """Close ``protocol`` and wait until it has ended; a receiver that does not let go within ``timeout`` is cut."""
        try:
            await self._bounded(protocol.close(), "close")
        except _TimedOut:
            protocol.abort()

    def abort(self) -> None:
        """Cancel a connection being opened and drop the open one (a message in flight is retried, ambiguous)."""
        if self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()
        if self._protocol is not None:
            self._protocol.abort()

    def connections(self) -> int:
        """1 while the connection is open, else 0."""
        return 1 if self._protocol is not None and not self._protocol.closed else 0


def _read(path: str) -> bytes:
    """An entry's file (a notification document is small)."""
    with open(path, "rb") as handle:
        return handle.read()
