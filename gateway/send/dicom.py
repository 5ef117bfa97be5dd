"""The sender of a DICOM destination: C-STORE SCU over associations kept per slot.

Each slot of the worker has its own association. For a batch it:

1. learns each entry's SOP class, transfer syntax and where its data set
   starts: from the journal record when it carries the data set's offset
   (schema version 4, issue 13: the intake saw the file meta as it arrived,
   so the send reads no header), else by reading the file's Part 10 header
   (an older journal, a morphed copy with a meta of its own); an unreadable
   file is a dead letter of kind ``unreadable``, a missing one a retry;
2. reuses the slot's association if it is open, carries contexts for the
   next entry and has sent fewer than ``batch_size`` instances; otherwise
   opens one proposing, per (SOP class, transfer syntax) of the remaining
   entries, the original syntax, plus Explicit and Implicit VR Little Endian
   as fallbacks when the original is a native (uncompressed) syntax
   (:func:`proposals_for`);
3. sends each entry (converted first with :func:`gateway.transcode.transcode`
   when only a fallback was accepted) and classifies the result with
   :mod:`gateway.send.classify`.

Under a destination's ``transfer_syntax`` policy other than ``preserve``
(issue 17) the contexts propose the policy's target for each SOP class
(with the native syntaxes as a second context, for instances without pixel
data), and each entry is converted on the file runner
(:func:`gateway.codecs.convert.convert_for`) before its C-STORE; the copy
is removed after the attempt. A conversion the codecs cannot do is a dead
letter of kind ``conversion``.

An association that failed mid-send is never reused (HARDENING F05,
fo-dicom #1359). The circuit probe is a C-ECHO on an association of its own.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint

from gateway.codecs import PRESERVE, ConversionError, TransferSyntaxPolicy
from gateway.codecs.convert import convert_for
from gateway.associate import AssociationAborted, ClientAssociation, NoPresentationContext, open_association
from gateway.config.schema import DicomDestination
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.meta import Part10Header, read_part10_header
from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.classify import classify_error, classify_status, data_went_out
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from gateway.transcode import NATIVE_SYNTAXES, TranscodeError, transcode
from gateway.ul.items import SCPSCURoleSelection, SOPClassExtendedNegotiation
from gateway.ul.negotiate import build_request

__all__ = ["DicomSender", "Proposals", "connect_dicom", "header_from_record", "proposals_for"]

#: ``[(abstract_syntax, [transfer_syntax, ...]), ...]`` as ``build_request`` takes them.
Proposals = Sequence[tuple[str, Sequence[str]]]

#: Whether an unchanged data set is sent with ``os.sendfile``
#: (:meth:`gateway.associate.ClientAssociation.store`). Off: a direct send is
#: complete in the kernel before the reactor has read a close the peer sent
#: right after its previous C-STORE-RSP (HARDENING F22, a real vendor habit),
#: so the instance counts as ambiguous and is redelivered; the buffered path
#: learns of the close first. The measured gain (13-20% less CPU on a
#: forward-only drain, none in some runs) does not pay for that. Issue 13.
ZERO_COPY = False

#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255, so at most 128 contexts;
#: one is kept for Verification.
_MAX_CONTEXTS = 127


def _native_fallbacks(transfer_syntax: str) -> tuple[str, ...]:
    """The fallback syntaxes proposed for an instance in ``transfer_syntax``.

    Only a native (uncompressed) data set can be re-encoded; every Storage
    SCP accepts Implicit VR Little Endian (PS3.4 B.4.1, PS3.5 10.1).
    """
    if transfer_syntax not in NATIVE_SYNTAXES:
        return ()
    return tuple(ts for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) if ts != transfer_syntax)


def proposals_for(pairs: Sequence[tuple[str, str]], *, uncompressed_fallback: bool = False) -> list[tuple[str, list[str]]]:
    """Presentation contexts for a batch of (SOP class, transfer syntax) pairs (PS3.8 9.3.2.2).

    Each pair gets a context with exactly its syntax, so the original bytes
    go out whenever the destination accepts them; a native syntax also gets
    a second context for the same SOP class offering Explicit VR LE, then
    Implicit VR LE, used (after :func:`gateway.transcode.transcode`) only
    when the first is refused.

    Under a destination's transfer-syntax policy (issue 17) the pairs carry
    the policy's target, and ``uncompressed_fallback`` adds Explicit then
    Implicit VR Little Endian for every SOP class whatever the target: an
    instance without Pixel Data (a report, a presentation state) has nothing
    to compress and goes in a native syntax (:func:`gateway.codecs.convert.convert_for`).

    :param pairs: the batch's (SOP class UID, transfer syntax UID) pairs, in order.
    :param uncompressed_fallback: offer the native fallbacks for compressed syntaxes too.
    :returns: the proposals, without duplicates, in order.
    """
    seen: dict[tuple[str, tuple[str, ...]], None] = {}
    for sop, ts in pairs:
        seen[(sop, (ts,))] = None
    for sop, ts in pairs:
        fallbacks = _native_fallbacks(ts)
        if not fallbacks and uncompressed_fallback:
            fallbacks = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
        if fallbacks:
            seen[(sop, fallbacks)] = None
    return [(sop, list(syntaxes)) for sop, syntaxes in seen]


def connect_dicom(
    reactor: Any,
    destination: DicomDestination,
    proposals: Proposals,
    role_selections: Sequence[SCPSCURoleSelection] = (),
    verification: bool = True,
    extended_negotiations: Sequence[SOPClassExtendedNegotiation] = (),
) -> "Deferred[ClientAssociation]":
    """Open an association to ``destination`` with its three timeouts kept apart.

    ``connect_timeout`` bounds the TCP connection, ``acse_timeout`` the
    A-ASSOCIATE answer (the ARTIM timer, PS3.8 9.1.5), and ``dimse_timeout``
    each response once the association is up.

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``.
    :param destination: the DICOM AE.
    :param proposals: presentation contexts; Verification is added (C-ECHO probes) unless ``verification`` is false.
    :param role_selections: SCP/SCU Role Selection items to propose (PS3.7
        D.3.3.4); none for C-STORE, SCU-role 0 / SCP-role 1 for a Storage
        Commitment report (PS3.4 J.3.3.1.3).
    :param verification: add the Verification context; false for an
        association that carries only what ``proposals`` name (a Storage
        Commitment report, :mod:`gateway.commitment.report`).
    :returns: a Deferred firing with the :class:`ClientAssociation`.
    """
    wanted = [(sop, list(ts)) for sop, ts in proposals]
    if verification and not any(sop == VERIFICATION_SOP_CLASS for sop, _ in wanted):
        wanted.insert(0, (VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE, EXPLICIT_VR_LE]))
    request = build_request(
        destination.calling_ae_title,
        destination.ae_title,
        wanted,
        max_pdu_length=destination.max_pdu_length,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        role_selections=role_selections,
        extended_negotiations=extended_negotiations,
    )
    endpoint_type = TCP6ClientEndpoint if ":" in destination.host else TCP4ClientEndpoint
    endpoint: Any = endpoint_type(reactor, destination.host, destination.port, timeout=destination.connect_timeout)
    if destination.tls is not None:
        # PS3.15 Annex B: the server is verified against the destination's CA
        # and name (RFC 6125, service-identity); never a plain-TCP fallback.
        # A verification failure ends the connection before the A-ASSOCIATE-AC,
        # a destination-wide fault (HARDENING decision 9, T12).
        from twisted.internet.endpoints import wrapClientTLS

        from gateway.security import client_tls_settings
        from gateway.tls import client_creator

        endpoint = wrapClientTLS(client_creator(client_tls_settings(destination.tls), destination.host), endpoint)
    return open_association(
        reactor,
        endpoint,
        request,
        acse_timeout=destination.acse_timeout,
        dimse_timeout=destination.dimse_timeout,
        max_pdu_length=destination.max_pdu_length,
    )


def header_from_record(entry: Entry) -> Part10Header | None:
    """The file meta facts a send needs, from the journal record, when it has them (issue 13).

    The intake records where the data set starts (``dataset_offset``,
    schema version 4) with the SOP class, instance and transfer syntax it
    wrote into the file meta (PS3.10 7.1), so the spooled file's header need
    not be read again. Not for a file other than the received one (a morphed
    copy has its own meta and offset) nor for a record from an older journal
    (offset 0): those are read from the file.

    :param entry: a leased entry.
    :returns: the header, or ``None`` when the file must be read.
    """
    record = entry.instance
    offset = record.dataset_offset
    if offset <= 0 or entry.path != record.path or record.size < offset:
        return None
    return Part10Header(
        sop_class_uid=record.sop_class_uid,
        sop_instance_uid=record.sop_instance_uid,
        transfer_syntax_uid=record.transfer_syntax_uid,
        dataset_offset=offset,
        size=record.size - offset,
    )


def _as_down(exc: BaseException) -> DestinationDown:
    """A failure to open an association: always the destination's, never one instance's."""
    outcome = classify_error(exc, data_sent=False, connecting=True)
    return outcome if isinstance(outcome, DestinationDown) else DestinationDown(str(exc))


@dataclass
class _Channel:
    """One slot's association and what is known about it."""

    association: ClientAssociation | None = None
    proposed: frozenset[tuple[str, str]] = frozenset()
    #: (SOP class, transfer syntax) pairs this association refused: an entry
    #: needing one gets a fresh association (the archive may have been fixed,
    #: e.g. before an operator's retry of its dead letter).
    refused: set[tuple[str, str]] = field(default_factory=set)
    sent: int = 0
    last_used: float = 0.0
    connecting: "Deferred[ClientAssociation] | None" = None


class DicomSender:
    """C-STORE SCU for one DICOM destination (see the module docstring).

    :param config: the destination.
    :param context: the worker's runner, clock, connection opener and scratch folder.
    """

    def __init__(self, config: DicomDestination, context: SendContext) -> None:
        self.config = config
        self.context = context
        self.clock = context.clock
        connect = context.connect
        if connect is None:
            reactor = context.reactor

            def connect(destination: DicomDestination, proposals: Proposals) -> "Deferred[ClientAssociation]":
                return connect_dicom(reactor, destination, proposals)

        self.connect: Callable[[DicomDestination, Proposals], "Deferred[ClientAssociation]"] = connect
        self.slots = config.max_associations
        self.batch_size = config.batch_size
        #: Generous: 10 x the DIMSE timeout.
        self.lease_seconds = 10 * config.dimse_timeout
        self._channels = [_Channel() for _ in range(self.slots)]
        #: Issue 17: the transfer syntax this destination gets.
        self.policy: TransferSyntaxPolicy = getattr(config, "policy", PRESERVE)

    async def _file(self, f: Callable[..., Any], *args: Any) -> Any:
        return await self.context.file_runner.run(f, *args)

    async def _after_a_poll(self) -> None:
        """Resume once the reactor has polled its sockets again (two turns of ``callLater(0)``).

        Before an open association carries the next instance: a peer that
        closes the connection right after its C-STORE-RSP (HARDENING F22) has
        its close read first, so the next instance goes on a new association
        and is a plain send, not one written into a closing connection and
        counted as ambiguous. A journal write between two sends used to leave
        this gap by itself; since issue 13 deliveries are written in batches.
        """
        for _ in range(2):
            turn: Deferred[None] = Deferred()
            self.clock.callLater(0, turn.callback, None)
            await turn

    # -- sending -------------------------------------------------------------------------

    async def send(self, slot: int, batch: Sequence[Entry]) -> AsyncGenerator[tuple[Entry, Outcome], None]:
        """Learn the batch's headers (journal or file), then C-STORE each readable entry in order."""
        channel = self._channels[slot]
        headers: dict[int, Part10Header] = {}
        for entry in batch:
            journaled = header_from_record(entry)
            if journaled is not None:
                headers[entry.entry_id] = journaled
                continue
            try:
                headers[entry.entry_id] = await self._file(read_part10_header, entry.path)
            except FileNotFoundError as e:
                yield entry, Retry(f"spool file missing: {e}")
            except (ValueError, OSError) as e:
                yield entry, DeadLetter(f"unreadable Part 10 file: {e}", DeadLetterKind.UNREADABLE)
        pending = [e for e in batch if e.entry_id in headers]
        for index, entry in enumerate(pending):
            rest = [(headers[e.entry_id].sop_class_uid, self._wanted_syntax(headers[e.entry_id])) for e in pending[index:]]
            yield entry, await self._send_one(channel, entry, headers[entry.entry_id], rest)

    async def _send_one(self, channel: _Channel, entry: Entry, header: Part10Header, rest: list[tuple[str, str]]) -> Outcome:
        """C-STORE one entry on the channel's association (opening one if needed)."""
        if channel.association is not None and channel.association.is_open and self.context.reactor is not None:
            # Only over the reactor's own sockets: an injected connection (tests'
            # in-memory loopback) has no socket to poll.
            await self._after_a_poll()
        down = await self._ensure_association(channel, rest)
        if down is not None:
            return down
        association = channel.association
        assert association is not None
        path = entry.path
        # The meta read for this batch is passed along: store() does not read it again.
        known: Part10Header | None = header
        syntax = header.transfer_syntax_uid
        scratches: list[str] = []
        if self.policy != PRESERVE:
            # Issue 17: the copy in the destination's syntax, made on the file runner.
            accepted = sorted(
                c.transfer_syntax for c in association.contexts.values() if c.abstract_syntax == header.sop_class_uid
            )
            if not accepted:
                channel.refused.add((header.sop_class_uid, self._wanted_syntax(header)))
                return classify_error(
                    NoPresentationContext(f"no accepted presentation context for {header.sop_class_uid}"),
                    data_sent=False,
                )
            try:
                converted = await self._file(convert_for, self.policy, entry.path, self._scratch_dir(), accepted)
            except FileNotFoundError as e:
                return Retry(f"spool file missing: {e}")
            except ConversionError as e:
                return DeadLetter(f"cannot convert to {self.policy.target}: {e}", DeadLetterKind.CONVERSION)
            if converted.temporary:
                scratches.append(converted.path)
                path = converted.path
                known = None  # the copy's meta differs (its syntax, its data set offset)
            syntax = converted.transfer_syntax_uid
        if association.context_for(header.sop_class_uid, syntax) is None:
            target = self._fallback_syntax(association, header.sop_class_uid, syntax)
            if target is None:
                self._remove(scratches)
                channel.refused.add((header.sop_class_uid, syntax))
                return classify_error(
                    NoPresentationContext(f"no accepted presentation context for {header.sop_class_uid} in {syntax}"),
                    data_sent=False,
                )
            fd, scratch = tempfile.mkstemp(prefix="transcode-", suffix=".dcm", dir=self.context.scratch_dir)
            os.close(fd)
            scratches.append(scratch)
            try:
                await self._file(transcode, path, scratch, target)
            except TranscodeError as e:
                self._remove(scratches)
                return DeadLetter(f"cannot convert to {target}: {e}", DeadLetterKind.CONVERSION)
            path = scratch
            known = None  # the converted copy's meta differs (its syntax, its data set offset)
        scratch = scratches[-1] if scratches else None
        channel.sent += 1
        channel.last_used = self.clock.seconds()
        try:
            # Zero-copy (sendfile) for the received bytes as they are; a converted copy keeps the buffered path.
            result = await Deferred.fromCoroutine(
                association.store(path, known, zero_copy=ZERO_COPY and scratch is None)
            )
        except FileNotFoundError as e:
            # Opened before anything is sent: the association is still good.
            return Retry(f"spool file missing: {e}")
        except Exception as e:
            if isinstance(e, AssociationAborted) or not association.is_open:
                # Never reuse an association that failed mid-send (HARDENING F05, fo-dicom #1359).
                channel.association = None
            return classify_error(e, data_sent=data_went_out(e))
        finally:
            channel.last_used = self.clock.seconds()
            self._remove(scratches)
        outcome = classify_status(result.status, entry.attempts + 1, self.config.retry)
        if result.error_comment and not isinstance(outcome, Delivered):
            if isinstance(outcome, Retry):
                outcome = Retry(f"{outcome.reason}: {result.error_comment}", outcome.ambiguous)
            elif isinstance(outcome, DeadLetter):
                outcome = DeadLetter(f"{outcome.reason}: {result.error_comment}", outcome.kind)
        if channel.sent >= self.batch_size:
            await self._close(channel)
        return outcome

    async def _ensure_association(self, channel: _Channel, pairs: list[tuple[str, str]]) -> DestinationDown | None:
        """Make sure the channel has an open association carrying contexts for the entries still to send."""
        association = channel.association
        if association is not None:
            first = set(pairs[:1])
            if association.is_open and channel.sent < self.batch_size and first <= channel.proposed and not first & channel.refused:
                return None
            await self._close(channel)
        proposals = proposals_for(pairs, uncompressed_fallback=self.policy != PRESERVE)
        if len(proposals) > _MAX_CONTEXTS:
            # PS3.8 9.3.2.2: too many contexts for one association; later entries wait for the next.
            proposals = proposals[:_MAX_CONTEXTS]
        channel.connecting = self.connect(self.config, proposals)
        try:
            channel.association = await channel.connecting
        except Exception as e:
            return _as_down(e)
        finally:
            channel.connecting = None
        channel.proposed = frozenset((sop, ts) for sop, syntaxes in proposals for ts in syntaxes if ts == syntaxes[0])
        channel.refused = set()
        channel.sent = 0
        channel.last_used = self.clock.seconds()
        self.context.reachable()
        return None

    def _fallback_syntax(self, association: ClientAssociation, sop_class_uid: str, syntax: str) -> str | None:
        """An accepted native syntax an instance in ``syntax`` can be re-encoded to, preferring Explicit VR LE."""
        if syntax not in NATIVE_SYNTAXES:
            return None
        accepted = {c.transfer_syntax for c in association.contexts.values() if c.abstract_syntax == sop_class_uid}
        for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
            if ts in accepted:
                return ts
        return None

    def _wanted_syntax(self, header: Part10Header) -> str:
        """The syntax proposed for the entry: its own, or the policy's target (issue 17)."""
        return self.policy.transfer_syntax_uid or header.transfer_syntax_uid

    def _scratch_dir(self) -> str:
        """Where converted copies go."""
        return self.context.scratch_dir or tempfile.gettempdir()

    @staticmethod
    def _remove(paths: list[str]) -> None:
        """Remove the attempt's converted copies (delivered or not)."""
        for scratch in paths:
            if os.path.exists(scratch):
                os.unlink(scratch)

    # -- the rest of the Sender interface ------------------------------------------------

    async def probe(self) -> DestinationDown | None:
        """A C-ECHO on an association of its own (PS3.7 9.1.5)."""
        try:
            association = await self.connect(self.config, [])
        except Exception as e:
            return _as_down(e)
        try:
            status = await Deferred.fromCoroutine(association.echo())
        except Exception as e:
            association.abort()
            return DestinationDown(f"C-ECHO failed: {type(e).__name__}: {e}")
        await self._release(association)
        if status != 0:
            return DestinationDown(f"C-ECHO status 0x{status:04X}")
        return None

    async def idle(self, slot: int, now: float) -> float | None:
        """Release the slot's association once it has been idle for ``idle_release`` seconds."""
        channel = self._channels[slot]
        if channel.association is None:
            return None
        idle_left = channel.last_used + self.config.idle_release - now
        if idle_left <= 0 or not channel.association.is_open:
            await self._close(channel)
            return None
        return idle_left

    async def close(self, slot: int) -> None:
        """Release the slot's association."""
        await self._close(self._channels[slot])

    def abort(self) -> None:
        """Cancel the associations being opened and abort the open ones."""
        for channel in self._channels:
            if channel.connecting is not None and not channel.connecting.called:
                channel.connecting.cancel()
            if channel.association is not None and channel.association.is_open:
                channel.association.abort()

    def connections(self) -> int:
        """Associations open now."""
        return sum(1 for c in self._channels if c.association is not None and c.association.is_open)

    async def _close(self, channel: _Channel) -> None:
        """Release the channel's association (abort if the peer does not answer within the ACSE timeout)."""
        association, channel.association = channel.association, None
        channel.proposed = frozenset()
        channel.sent = 0
        if association is not None and association.is_open:
            await self._release(association)

    async def _release(self, association: ClientAssociation) -> None:
        released = association.release()
        timer = self.clock.callLater(self.config.acse_timeout, association.abort)
        try:
            await released
        except Exception:
            pass
        finally:
            if timer.active():
                timer.cancel()
