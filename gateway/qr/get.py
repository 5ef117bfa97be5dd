"""C-GET through the gateway: retrieve from a source, C-STORE sub-operations back on the requester's association (PS3.4 C.4.3).

Theory of operation. The requester sends a C-GET-RQ (Patient Root or Study
Root, PS3.4 C.6.1.1.1 / C.6.2.1.1) on an association where it also accepted
storage SOP classes in the SCP role (SCP/SCU Role Selection, PS3.7 D.3.3.4,
PS3.4 C.4.3.3). The gateway asks the sources of ``retrieve.sources`` in
order, each with its own C-GET (the gateway proposes the storage classes in
the SCP role on that association, so the source's sub-operations come back
to it); the first source that has matching instances is the one used, the
others are not asked (PS3.4 C.4.3.3: a C-GET SCP retrieves what matches from
its own store; ours is the first archive that holds it). A source that
fails part-way is not replaced by the next (that would send the requester
duplicates): what it had left is counted failed.

Every instance the source sends is written to a scratch file in the spool's
``scratch`` folder (:class:`DicomGetSource`), then stored on the requester's association with
:meth:`~gateway.qr.context.IResponder.store`, one at a time (streaming: at
most one instance in flight, the source's next C-STORE waits for our answer).
The source is answered Success once the instance is in the gateway's
scratch: the gateway counts the requester's outcome itself, so that a
sub-operation is never counted twice (once by the source, once here).

Counting (PS3.4 C.4.3.1.3, the (0000,1020)-(0000,1023) elements):

* *completed*: the requester answered Success;
* *warning*: it answered a warning (0xBxxx, PS3.4 B.2.3);
* *failed*: it answered a failure, or it accepted no presentation context
  for that SOP class and transfer syntax, so no sub-operation could be
  issued (PS3.4 C.4.3.3: such an instance is a failed sub-operation; never
  silently dropped), plus what the source itself reports failed (instances
  it could not send);
* *remaining*: the source's own Number of Remaining Sub-operations, from its
  latest pending response.

The final status (PS3.4 C.4.3.1.4, Table C.4-3): 0x0000 when every
sub-operation completed; 0xB000 (Warning: Sub-operations Complete - One or
more Failures or Warnings) with the Failed SOP Instance UID List (0008,0058)
(PS3.4 C.4.3.1.3.2) when any failed or had a warning; 0xA702 with that list
when every one failed (PS3.4 C.4.3.2: the SCU reads a Failure as "all
sub-operations were unsuccessful"); 0xFE00 (Cancel:
Sub-operations terminated due to Cancel Indication) after a C-CANCEL-RQ,
which also reaches the source (PS3.7 9.3.3.3); 0xA702 (Refused: Out of
Resources - Unable to perform sub-operations) when no source could be
retrieved from, with an Error Comment (0000,0902) naming them; a source's
own failure status (e.g. 0xA900, Identifier does not match SOP Class) is
relayed as it is.

``retrieve.timeout`` bounds the whole C-GET: then the source is cancelled
and what it had left is counted failed. Each C-GET is journaled as a
retrieve of kind ``get`` (:mod:`gateway.queue.retrieves`; no items, since
no correlation is needed) and finished DONE, CANCELLED or FAILED.

A source that accepts no C-GET context for the request's model
(:class:`NoGetContext`) is retrieved from by a C-MOVE to the gateway itself
(:class:`MoveRelaySource`, through :class:`GetOrMoveSource`; PS3.4 C.4.3 does
not say how the SCP obtains what it sends, and issue 16 asks for "C-GET when
the source supports it, C-MOVE to itself otherwise"): the instances are
located by an IMAGE-level C-FIND, the relay leg is journaled (kind ``get``,
its items EXPECTED, an outgoing Message ID from the journal, as
:mod:`gateway.qr.move` does), and the sub-operations, which arrive on the
source's own association (to any node), are taken into custody by the intake
(:meth:`gateway.intake.Intake._take_relayed`: spool and journal, no queue
entry) and handed over through a link in the scratch folder, announced to
this process (:data:`RELAYS`) or found by a poll every :data:`POLL_INTERVAL`
(another node sharing the spool). Each is then stored back like a C-GET
sub-operation, re-encoded first into a native syntax the requester accepted
when it came in another (:class:`SyntaxFit`), and the item ends COMPLETED,
WARNING or FAILED in the journal. The source's C-MOVE refusing with nothing
sent (e.g. 0xA801: it does not know the gateway's AE title) makes the next
source asked, as a C-GET refusal does.

``retrieve.route`` names a route whose morph plan is applied to every
instance before it is stored back (:class:`RouteMorph`, the splice writer of
the forwarder); a morph that fails fails the sub-operation (never a copy
with less morphing than the route promises). Without it, as received.

Each sub-operation C-STORE-RSP is awaited at most the listener's DIMSE
timeout (``limits.dimse_timeout``) or what is left of ``retrieve.timeout``,
whichever is sooner: then the instance is failed, the requester's
association aborted (a missing response is a protocol failure; PS3.8 7.3,
A-ABORT), the source cancelled and the retrieve ended in the journal.

Scratch files (``get-*`` sub-operations, ``getrelay-*`` hand-overs,
``getmorph-*`` copies) a crash left behind are removed at start
(:func:`sweep_scratch`). A relayed instance has no queue entry, so once
journaled it is "finished" for the spool's clean-up (deleted after
``retention.keep_delivered``); the hand-over link keeps its bytes until it
was sent back, and is removed then.

Limits: with node-local spools (``spool.shared: false``) only the node that
took the C-GET can hand over what it received itself; sub-operations that
reach another node count failed. A C-GET through a relay leg appears as two
journaled retrieves (the request, no items; its leg, with items).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure

from gateway.associate import FileStoreSink
from gateway.durable import unlink_if_present
from gateway.meta import read_part10_header
from gateway.private import make_private_dirs
from gateway.dimse.identifier import IdentifierError, check_query, decode_identifier, sop_class_model
from gateway.dimse.status import Status, StatusCategory, category
from gateway.qr.context import IResponder, QRContext, SubOperations
from gateway.ul.items import SCPSCURoleSelection

log = logging.getLogger(__name__)

#: PS3.4 C.4.3.1.4, Table C.4-3: Refused: Out of Resources - Unable to perform sub-operations.
UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702
#: PS3.4 C.4.3.1.4, Table C.4-3: Warning: Sub-operations Complete - One or more Failures or Warnings.
SUB_OPERATIONS_WITH_FAILURES = 0xB000
#: PS3.4 C.4.3.1.4, Table C.4-3: Failed: Unable to process.
UNABLE_TO_PROCESS = 0xC000


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE sub-operation the source sent the gateway, held in a scratch file.

    :ivar path: the file; its data set starts at ``dataset_offset``.
    :ivar sop_class_uid: the Affected SOP Class UID of the source's C-STORE-RQ.
    :ivar sop_instance_uid: its Affected SOP Instance UID.
    :ivar transfer_syntax_uid: the transfer syntax the data set is encoded in
        (the source's presentation context).
    :ivar dataset_offset: where the data set starts in ``path`` (0: a bare data set).
    """

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int = 0
    #: Filled by :func:`retrieve` once the requester answered: ``completed``,
    #: ``warning`` or ``failed`` (the relay leg journals each item's end from it).
    outcome: list[str] = field(default_factory=list, compare=False)


@dataclass(frozen=True)
class SourceOutcome:
    """A source's final C-GET-RSP.

    :ivar status: its (0000,0900).
    :ivar counts: its sub-operation counts (``failed`` counts only what it could
        not send: the gateway answers every sub-operation it receives Success).
    :ivar failed_uids: its Failed SOP Instance UID List (0008,0058).
    :ivar error_comment: its Error Comment (0000,0902).
    """

    status: int
    counts: SubOperations = SubOperations()
    failed_uids: tuple[str, ...] = ()
    error_comment: str = ""


class SourceUnavailable(Exception):
    """The source could not be asked: no association, or no C-GET context accepted for the request's SOP class."""


class NoGetContext(SourceUnavailable):
    """The source accepted no C-GET context for the request's model: retrieve by C-MOVE to the gateway instead."""


OnInstance = Callable[[ReceivedInstance], "Deferred[int]"]
OnPending = Callable[[SubOperations], None]


class ISource(Protocol):
    """One source's C-GET as :func:`retrieve` drives it (the adapter over ``ClientAssociation.get``)."""

    name: str

    def get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> "Deferred[SourceOutcome]":
        """Send the C-GET-RQ and run it to its final response.

        ``on_instance`` is called for each sub-operation C-STORE the source
        sends; its result is the status the source is answered with.
        ``on_pending`` is called with each pending response's counts.

        :raises SourceUnavailable: (as a failed Deferred) before anything was sent.
        """

    def cancel(self) -> None:
        """Send C-CANCEL-RQ for the C-GET under way (PS3.7 9.3.3.3); the final response still follows."""

    def close(self) -> "Deferred[None]":
        """Release the association (abort it when it cannot be released)."""


OpenSource = Callable[[str, str], ISource]
"""``open_source(source_name, get_sop_class_uid)``: a not-yet-associated source."""

Prepare = Callable[[ReceivedInstance], "Deferred[ReceivedInstance]"]
"""Makes the copy of an instance that is sent back (a route's morph); its path is removed after the sub-operation."""


class StoreTimeout(Exception):
    """The requester did not answer a sub-operation C-STORE-RQ in time."""


def _bounded(d: "Deferred[Any]", seconds: float | None, clock: Any) -> "Deferred[Any]":
    """``d``'s result, or :class:`StoreTimeout` after ``seconds`` (``None``: no bound); a late result is dropped."""
    if clock is None or seconds is None:
        return d
    out: Deferred[Any] = Deferred()

    def expire() -> None:
        if not out.called:
            out.errback(StoreTimeout(f"no C-STORE-RSP within {seconds:g} s"))

    timer = clock.callLater(seconds, expire)

    def done(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)

    d.addBoth(done)
    return out


@dataclass
class _Tally:
    """The counts of one C-GET as the requester sees them."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    #: the source's own counts, from its latest (pending or final) response
    source: SubOperations = SubOperations()
    #: what the source reported failed (its final Failed SOP Instance UID List)
    source_failed_uids: tuple[str, ...] = ()

    def counts(self, remaining: int | None) -> SubOperations:
        """The requester's counts, with the source's failures and warnings added."""
        return SubOperations(
            remaining=remaining,
            completed=self.completed,
            failed=self.failed + self.source.failed,
            warning=self.warning + self.source.warning,
        )

    def all_failed_uids(self) -> tuple[str, ...]:
        """Ours, then the source's, each once (PS3.4 C.4.3.1.3.2)."""
        seen: dict[str, None] = dict.fromkeys(self.failed_uids)
        seen.update(dict.fromkeys(self.source_failed_uids))
        return tuple(seen)


def final_status(counts: SubOperations) -> int:
    """The final C-GET-RSP status for these counts (PS3.4 C.4.3.1.4, C.4.3.2).

    Success when nothing failed or had a warning; when *every* sub-operation
    failed, a failure (the SCU reads "Failure or Refused" as "all
    sub-operations were unsuccessful", PS3.4 C.4.3.2): 0xA702, Unable to
    perform sub-operations; 0xB000 in every other case.
    """
    if not counts.failed and not counts.warning:
        return int(Status.SUCCESS)
    if not counts.completed and not counts.warning:
        return UNABLE_TO_PERFORM_SUB_OPERATIONS
    return SUB_OPERATIONS_WITH_FAILURES


def _store_outcome(status: int) -> str:
    """``completed``, ``warning`` or ``failed`` for a requester's C-STORE-RSP status (PS3.4 B.2.3)."""
    kind = category(status)
    if kind is StatusCategory.SUCCESS:
        return "completed"
    if kind is StatusCategory.WARNING:
        return "warning"
    return "failed"


async def retrieve(
    sop_class_uid: str,
    identifier: bytes,
    responder: IResponder,
    sources: Sequence[str],
    open_source: OpenSource,
    remove: Callable[[str], None],
    clock: Any = None,
    timeout: float | None = None,
    prepare: Prepare | None = None,
    store_timeout: float | None = None,
) -> None:
    """Run one C-GET: ask the sources in order, store what the first that has matches sends, answer the requester.

    Ends with exactly one :meth:`IResponder.final`; never raises.

    :param sop_class_uid: the request's Affected SOP Class UID (a GET class).
    :param identifier: the request's identifier, encoded in the request's
        transfer syntax (already morphed and checked by the caller).
    :param responder: the requester's side.
    :param sources: the source names (``retrieve.sources``), in order.
    :param open_source: makes a source's adapter.
    :param remove: deletes a scratch file once it was stored (or failed).
    :param clock: ``IReactorTime`` for ``timeout``.
    :param timeout: ``retrieve.timeout``: seconds from now after which the
        source is cancelled and the C-GET ends with what was done, what the
        source had left counted failed.
    :param prepare: makes the copy sent back (``retrieve.route``'s morph,
        :class:`RouteMorph`); a failure is a failed sub-operation, never a
        copy with less morphing than the route promises.
    :param store_timeout: seconds the requester has to answer each
        sub-operation C-STORE (the listener's DIMSE timeout), bounded by what
        is left of ``timeout``: past it the instance is failed, the
        requester's association is aborted (a missing response is a
        protocol failure, PS3.8 7.3 A-ABORT) and the C-GET ends.
    """
    tally = _Tally()
    cancelled = False
    expired = False
    aborted = ""
    current: list[ISource] = []
    started = clock.seconds() if clock is not None else 0.0

    def on_cancel(_: object) -> None:
        nonlocal cancelled
        cancelled = True
        for source in current:
            source.cancel()

    def on_deadline() -> None:
        nonlocal expired
        expired = True
        log.warning("C-GET ran past retrieve.timeout (%s s): cancelling the source", timeout)
        for source in current:
            source.cancel()

    responder.cancelled.addCallback(on_cancel)
    timer = clock.callLater(timeout, on_deadline) if clock is not None and timeout is not None else None

    def bound() -> float | None:
        """Seconds the requester has for this sub-operation's C-STORE-RSP: the DIMSE timeout or what is left of the C-GET's."""
        if clock is None or store_timeout is None:
            return None
        limits = [t for t in (store_timeout, None if timeout is None else started + timeout - clock.seconds()) if t is not None]
        return max(0.0, min(limits)) if limits else None

    async def on_instance(instance: ReceivedInstance) -> int:
        nonlocal aborted
        sent = instance
        try:
            if cancelled or expired or aborted:
                # PS3.4 C.4.3.3: after a cancel no further sub-operation is
                # started; the source hears "out of resources" and counts it.
                return int(Status.OUT_OF_RESOURCES)
            try:
                if prepare is not None:
                    sent = await prepare(instance)
                status = await _bounded(
                    responder.store(
                        sent.path,
                        sent.sop_class_uid,
                        sent.sop_instance_uid,
                        sent.transfer_syntax_uid,
                        sent.dataset_offset,
                    ),
                    bound(),
                    clock,
                )
            except StoreTimeout as error:
                # The requester never answered: the instance failed, the
                # association is aborted (nothing more can be said on it) and
                # the source is stopped; the C-GET ends.
                log.warning("C-GET requester did not answer sub-operation %s: %s; aborting its association", sent.sop_instance_uid, error)
                aborted = str(error)
                status = -1
                abort = getattr(responder, "abort", None)
                if abort is not None:
                    abort(aborted)
                for source in current:
                    source.cancel()
            except Exception as error:  # noqa: BLE001 - every error is a failed sub-operation
                # NoPresentationContext: the requester accepted no context (SCP
                # role) for this class and syntax (PS3.4 C.4.3.3): a failed
                # sub-operation, listed, never silently dropped. A morph that
                # fails (prepare) is one too.
                log.info("C-GET sub-operation %s not stored on the requester: %s", instance.sop_instance_uid, error)
                status = -1
            outcome = _store_outcome(status) if status >= 0 else "failed"
            instance.outcome.append(outcome)
            if outcome == "completed":
                tally.completed += 1
            elif outcome == "warning":
                tally.warning += 1
            else:
                tally.failed += 1
                tally.failed_uids.append(sent.sop_instance_uid)
            return int(Status.SUCCESS)
        finally:
            remove(instance.path)
            if sent is not instance:
                remove(sent.path)

    def on_pending(counts: SubOperations) -> None:
        tally.source = counts
        if not (cancelled or expired):
            responder.pending(Status.PENDING, counts=tally.counts(counts.remaining))

    unavailable: list[str] = []
    broken = ""
    outcome: SourceOutcome | None = None
    for name in sources:
        if cancelled or expired or aborted:
            break
        source = open_source(name, sop_class_uid)
        current[:] = [source]
        try:
            outcome = await source.get(
                sop_class_uid, identifier, lambda i: ensureDeferred(on_instance(i)), on_pending
            )
        except Exception as error:  # noqa: BLE001 - a source that fails is left out
            log.warning("C-GET source %s failed: %s", name, error)
            if tally.completed + tally.failed + tally.warning or tally.source.completed or tally.source.failed:
                # It failed part-way (association aborted, DIMSE timeout):
                # asking the next source would send the requester duplicates.
                # What it had left (its last Remaining) is counted failed.
                left = tally.source.remaining or 0
                outcome = SourceOutcome(
                    SUB_OPERATIONS_WITH_FAILURES,
                    SubOperations(0, tally.source.completed, tally.source.failed + left, tally.source.warning),
                    error_comment=f"source {name} failed part-way",
                )
                broken = outcome.error_comment
                break  # (the finally clause releases it)
            unavailable.append(f"{name}: {error}" if str(error) else name)
            outcome = None
            continue
        finally:
            current.clear()
            close = source.close()
            close.addErrback(lambda f: None)
            await close
        tally.source = SubOperations(
            remaining=outcome.counts.remaining,
            completed=outcome.counts.completed,
            failed=outcome.counts.failed,
            warning=outcome.counts.warning,
        )
        tally.source_failed_uids = outcome.failed_uids
        received = tally.completed + tally.failed + tally.warning
        kind = category(outcome.status)
        if received or outcome.counts.failed or outcome.counts.warning or cancelled or expired:
            break
        if kind is StatusCategory.FAILURE:
            # A refusal with nothing done (no matches it can send, out of
            # resources): the next source may have them.
            unavailable.append(f"{name}: status 0x{outcome.status:04X} {outcome.error_comment}".rstrip())
            continue
        # Success with no sub-operation: no match here, ask the next.
    if timer is not None and timer.active():
        timer.cancel()
    if aborted:
        # The requester's association is gone (aborted above): this final
        # response goes nowhere, but it is what the journal and audit record.
        left = outcome.counts.remaining if outcome is not None and outcome.counts.remaining else 0
        tally.failed += left
        counts = tally.counts(0)
        responder.final(final_status(counts), counts, error_comment=aborted[:64], failed_uids=tally.all_failed_uids())
        return
    if expired and not cancelled:
        # PS3.4 C.4.3.1.4 has no "timed out" status: what the source had not
        # sent is counted failed (Number of Failed Sub-operations), and the
        # response is the warning, or 0xA702 when nothing could be done.
        left = outcome.counts.remaining if outcome is not None and outcome.counts.remaining else 0
        tally.failed += left
        received = tally.completed + tally.failed + tally.warning
        comment = f"retrieve.timeout ({timeout:g} s) passed"
        counts = tally.counts(0)
        status = final_status(counts) if counts.failed or counts.warning else UNABLE_TO_PERFORM_SUB_OPERATIONS
        responder.final(status, counts, error_comment=comment, failed_uids=tally.all_failed_uids())
        return
    if broken and not cancelled:
        assert outcome is not None
        tally.source = outcome.counts
        counts = tally.counts(0)
        responder.final(final_status(counts), counts, error_comment=broken[:64], failed_uids=tally.all_failed_uids())
        return
    _answer(responder, tally, outcome, cancelled, unavailable, received_any=tally.completed + tally.failed + tally.warning > 0)


def _answer(
    responder: IResponder,
    tally: _Tally,
    last: SourceOutcome | None,
    cancelled: bool,
    unavailable: Sequence[str],
    received_any: bool,
) -> None:
    """The final C-GET-RSP (PS3.4 C.4.3.1.4)."""
    failed_uids = tally.all_failed_uids()
    if cancelled:
        remaining = last.counts.remaining if last is not None else None
        responder.final(Status.CANCEL, tally.counts(remaining), failed_uids=failed_uids)
        return
    if not received_any and last is not None and category(last.status) is StatusCategory.FAILURE:
        # The last source asked refused it (every source refused or was down).
        comment = "; ".join(unavailable)
        status = last.status if len(unavailable) == 1 else UNABLE_TO_PERFORM_SUB_OPERATIONS
        responder.final(status, tally.counts(0), error_comment=comment[:64], failed_uids=failed_uids)
        return
    if last is None:
        comment = "no source could be retrieved from: " + "; ".join(unavailable) if unavailable else "no retrieve sources configured"
        # (0000,0902) Error Comment is LO: at most 64 characters (PS3.7 E.1).
        responder.final(UNABLE_TO_PERFORM_SUB_OPERATIONS, tally.counts(0), error_comment=comment[:64])
        return
    counts = tally.counts(0)
    status = final_status(counts)
    if status != Status.SUCCESS:
        # PS3.4 C.4.3.1.3.2: the Failed SOP Instance UID List on Warning and Failure.
        responder.final(status, counts, failed_uids=failed_uids)
    else:
        responder.final(Status.SUCCESS, counts)


#: Storage classes the gateway also proposes to a source (SCP role), after
#: the requester's own, so that an instance of a class the requester did not
#: accept still reaches the gateway and is counted failed *by the gateway*,
#: listed in the Failed SOP Instance UID List (PS3.4 C.4.3.1.3.2), whatever
#: the source does with a class it cannot send.
COMMON_STORAGE_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image Storage
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose Storage
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set Storage
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data Storage
)

#: PS3.8 9.3.2.2: presentation context IDs are odd 1-255, so at most 128
#: contexts; one goes to the GET class and one is kept for Verification.
MAX_STORAGE_CONTEXTS = 126

_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def source_proposals(
    get_sop_class_uid: str, requester_contexts: Mapping[int, Any]
) -> tuple[list[tuple[str, list[str]]], list[SCPSCURoleSelection]]:
    """The presentation contexts and role selections of the gateway's association to a source.

    The GET class, then every storage class the requester accepted in the SCP
    role with the syntaxes it accepted for it (so the source encodes what
    the requester takes), then :data:`COMMON_STORAGE_CLASSES` in the
    uncompressed syntaxes; each storage class with a role selection making
    the gateway its SCP (SCU-role 0, SCP-role 1, PS3.7 D.3.3.4, PS3.4
    C.4.3.3).

    :param get_sop_class_uid: the request's GET class.
    :param requester_contexts: the requester's accepted contexts by ID
        (:attr:`gateway.receive.AssociationInfo.contexts`).
    :returns: ``(proposals, role_selections)`` for ``QRContext.connect``.
    """
    syntaxes: dict[str, list[str]] = {}
    for context in sorted(requester_contexts.values(), key=lambda c: c.context_id):
        if context.scp_role and context.abstract_syntax != get_sop_class_uid:
            wanted = syntaxes.setdefault(context.abstract_syntax, [])
            if context.transfer_syntax not in wanted:
                wanted.append(context.transfer_syntax)
    for sop_class in COMMON_STORAGE_CLASSES:
        syntaxes.setdefault(sop_class, list(_UNCOMPRESSED))
    storage = list(syntaxes.items())[:MAX_STORAGE_CONTEXTS]
    proposals = [(get_sop_class_uid, list(_UNCOMPRESSED))] + [(c, ts) for c, ts in storage]
    roles = [SCPSCURoleSelection(c, scu_role=False, scp_role=True) for c, _ in storage]
    return proposals, roles


def _remove(path: str) -> None:
    """Delete a scratch file (already gone is fine)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def get(info: Any, rq: Any, identifier: bytes, responder: IResponder, ctx: QRContext) -> "Deferred[None]":
    """The C-GET handler ``scp.py`` calls (:mod:`gateway.qr.context`); ends with exactly one final response.

    :param info: the requester's association (``listener``: its listener's
        name; ``contexts``: what it accepted).
    :param rq: the C-GET-RQ (``affected_sop_class_uid``).
    :param identifier: its identifier, in ``responder.transfer_syntax``.
    :param responder: the requester's side.
    :param ctx: the gateway's side. ``ctx.extra["get.open_source"]``, when
        set, replaces :class:`DicomGetSource` (tests).
    :returns: fires when the final response was given.
    """
    config = ctx.config()
    listener = next((item for item in config.listen if item.name == info.listener), None)
    settings = config.retrieve_for(listener) if listener is not None else config.retrieve
    if settings is None or not settings.sources:
        responder.final(UNABLE_TO_PERFORM_SUB_OPERATIONS, SubOperations(0, 0, 0, 0), error_comment="no retrieve sources configured")
        return succeed(None)
    model = sop_class_model(rq.affected_sop_class_uid)
    try:
        if model is None:
            raise IdentifierError("not a C-GET SOP class", Status.SOP_CLASS_NOT_SUPPORTED)
        request = decode_identifier(identifier, responder.transfer_syntax)
        level = check_query(request, model[0], retrieve=True)
    except IdentifierError as error:
        # PS3.4 C.4.3.1.4: 0xA900 (Identifier does not match SOP Class) or
        # 0xC000-class (Unable to process) with an Error Comment.
        responder.final(error.status, error_comment=error.comment[:64], offending=error.offending)
        return succeed(None)
    scratch = os.path.join(config.spool.path, "scratch")
    open_source: OpenSource | None = ctx.extra.get("get.open_source")
    if open_source is None:
        destinations = {d.name: d for d in config.destinations}
        proposals, roles = source_proposals(rq.affected_sop_class_uid, info.contexts)

        def new_retrieve(expected: tuple[Any, ...], source: str) -> Any:
            return _relay_retrieve(ctx, info, rq, level, settings, expected, source)

        def open_source(name: str, sop_class_uid: str) -> ISource:
            destination = destinations.get(name)
            return source_for(
                getattr(destination, "retrieve_by", "auto"),
                lambda: DicomGetSource(name, destination, ctx, proposals, roles, scratch, responder.transfer_syntax),
                lambda: MoveRelaySource(name, destination, ctx, scratch, responder.transfer_syntax, new_retrieve),
            )

    # The route's morph, then the requester's syntax (relayed instances come in the source's).
    prepare = chain(
        _route_morph(ctx, config, settings, info, scratch),
        SyntaxFit(info.contexts, scratch, lambda f, *a: _run_blocking(ctx, f, *a)) if getattr(info, "contexts", None) else None,
    )
    limits = getattr(config, "limits", None)
    store_timeout = getattr(limits, "dimse_timeout", None)

    started = ctx.wall()

    async def run() -> None:
        journaled = await _open_journal(ctx, info, rq, level, settings)
        recording = _RecordingResponder(responder)
        await retrieve(
            rq.affected_sop_class_uid, identifier, recording, settings.sources, open_source, _remove,
            ctx.reactor, settings.timeout, prepare, store_timeout,
        )
        _observe_answer(ctx, info, rq, level, request, settings, recording, started)
        if journaled is not None:
            await _finish_journal(ctx, journaled, recording)

    d = ensureDeferred(run())

    def unexpected(failure: Failure) -> None:
        log.error("C-GET failed unexpectedly: %s", failure.getTraceback())
        responder.final(UNABLE_TO_PROCESS, error_comment="internal error")

    d.addErrback(unexpected)
    return d


def _observe_answer(
    ctx: QRContext, info: Any, rq: Any, level: str, request: Any, settings: Any, recording: "_RecordingResponder", started: float
) -> None:
    """Tell the observer how the C-GET ended (audited as DICOM Instances Transferred, PS3.15 A.5.3.7; counted)."""
    from gateway import events

    status = recording.status if recording.status is not None else UNABLE_TO_PROCESS
    kind = category(status)
    outcome = {
        StatusCategory.SUCCESS: "success",
        StatusCategory.WARNING: "warning",
        StatusCategory.CANCEL: "cancelled",
    }.get(kind, "failed")
    value = request.get("StudyInstanceUID", None) if request is not None else None
    studies = (value,) if isinstance(value, str) and value else tuple(str(v) for v in value) if value and not isinstance(value, str) else ()
    try:
        ctx.observer.observe(
            events.RetrieveAnswered(
                listener=getattr(info, "listener", ""),
                calling_ae_title=getattr(info, "calling_ae_title", ""),
                peer=str(getattr(info, "peer_address", "")),
                verb="get",
                sop_class_uid=str(rq.affected_sop_class_uid),
                level=level,
                outcome=outcome,
                status=status,
                completed=recording.counts.completed,
                failed=recording.counts.failed,
                warning=recording.counts.warning,
                mode="relay",
                sources=tuple(settings.sources),
                study_uids=studies,
                failed_uids=recording.failed_uids,
                duration_seconds=max(0.0, ctx.wall() - started),
                reason=recording.comment,
            )
        )
    except Exception as error:  # noqa: BLE001 - the requester has its answer; the record is lost, logged
        log.error("could not report a C-GET's end: %s", error)


def _relay_retrieve(ctx: QRContext, info: Any, rq: Any, level: str, settings: Any, expected: tuple[Any, ...], source: str) -> Any:
    """The journal record of a C-GET's relay leg (kind ``get``, its items EXPECTED; :class:`MoveRelaySource`)."""
    from gateway.queue.retrieves import NewRetrieve

    return NewRetrieve(
        kind="get",
        requester_ae_title=getattr(info, "calling_ae_title", ""),
        listener=getattr(info, "listener", ""),
        requester_message_id=int(rq.message_id),
        destination="",
        mode="relay",
        level=level,
        sources=(source,),
        expected=expected,
        deadline=ctx.wall() + settings.timeout,
    )


def _route_morph(ctx: QRContext, config: Any, settings: Any, info: Any, scratch: str) -> Prepare | None:
    """``retrieve.route``'s morph for the instances stored back (``None``: sent as received)."""
    name = getattr(settings, "route", "")
    if not name:
        return None
    route = next((r for r in config.routes if r.name == name), None)
    if route is None or route.morph is None or not route.morph.actions:
        return None
    from gateway.route import RoutingContext

    context = RoutingContext(
        calling_ae_title=getattr(info, "calling_ae_title", ""),
        called_ae_title=getattr(info, "called_ae_title", ""),
        source_address=str(getattr(info, "peer_address", "")).rsplit(":", 1)[0],
        listener=getattr(info, "listener", ""),
        received_at=ctx.wall(),
    )
    return RouteMorph(route.morph, scratch, lambda f, *a: _run_blocking(ctx, f, *a), context)


class _RecordingResponder:
    """An :class:`IResponder` that passes everything on and remembers the final status and comment (for the journal)."""

    def __init__(self, inner: IResponder) -> None:
        self._inner = inner
        self.status: int | None = None
        self.comment = ""
        self.counts = SubOperations()
        self.failed_uids: tuple[str, ...] = ()

    def pending(self, status: int, identifier: bytes | None = None, counts: SubOperations | None = None) -> None:
        """As the wrapped responder."""
        self._inner.pending(status, identifier, counts)

    def final(
        self,
        status: int,
        counts: SubOperations | None = None,
        error_comment: str = "",
        failed_uids: Sequence[str] = (),
        identifier: bytes | None = None,
    ) -> None:
        """As the wrapped responder; remembered."""
        self.status, self.comment = int(status), error_comment
        self.counts, self.failed_uids = counts or SubOperations(), tuple(failed_uids)
        self._inner.final(status, counts, error_comment, failed_uids, identifier)

    @property
    def transfer_syntax(self) -> str:
        """As the wrapped responder."""
        return self._inner.transfer_syntax

    @property
    def cancelled(self) -> "Deferred[None]":
        """As the wrapped responder."""
        return self._inner.cancelled

    def abort(self, detail: str) -> None:
        """As the wrapped responder (when it can abort its association)."""
        abort = getattr(self._inner, "abort", None)
        if abort is not None:
            abort(detail)

    def store(self, path: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset_offset: int) -> "Deferred[int]":
        """As the wrapped responder."""
        return self._inner.store(path, sop_class_uid, sop_instance_uid, transfer_syntax_uid, dataset_offset)


async def _open_journal(ctx: QRContext, info: Any, rq: Any, level: str, settings: Any) -> int | None:
    """Journal the C-GET as a retrieve (``kind="get"``; visible with the other retrieves), when the store is one.

    The C-GET from a source needs no correlation (its sub-operations come on
    the gateway's own association), so no items are expected; a journal that
    does not answer only loses the record (logged), never the C-GET.

    :returns: the retrieve ID, or ``None``.
    """
    if ctx.journal is None or ctx.run is None or not hasattr(ctx.journal, "open_retrieve"):
        return None
    from gateway.queue.retrieves import NewRetrieve

    new = NewRetrieve(
        kind="get",
        requester_ae_title=getattr(info, "calling_ae_title", ""),
        listener=getattr(info, "listener", ""),
        requester_message_id=int(rq.message_id),
        destination="",
        mode="relay",
        level=level,
        sources=tuple(settings.sources),
        expected=(),
        deadline=ctx.wall() + settings.timeout,
    )
    try:
        opened = await ctx.run.run(ctx.journal.open_retrieve, new, ctx.wall())
    except Exception as error:  # noqa: BLE001 - the record is lost, the C-GET goes on
        log.warning("C-GET not journaled: %s", error)
        return None
    return int(opened.retrieve_id)


async def _finish_journal(ctx: QRContext, retrieve_id: int, recording: _RecordingResponder) -> None:
    """End the journaled retrieve with the final status: DONE, CANCELLED or FAILED (its message ID is free again)."""
    from gateway.queue.retrieves import RetrieveState

    status = recording.status if recording.status is not None else UNABLE_TO_PROCESS
    kind = category(status)
    state = {
        StatusCategory.CANCEL: RetrieveState.CANCELLED,
        StatusCategory.FAILURE: RetrieveState.FAILED,
    }.get(kind, RetrieveState.DONE)
    error = recording.comment or ("" if state is RetrieveState.DONE else f"status 0x{status:04X}")
    try:
        await ctx.run.run(ctx.journal.finish_retrieve, retrieve_id, state, error, ctx.wall())
    except Exception as error_:  # noqa: BLE001 - logged; the requester has its answer
        log.warning("C-GET retrieve %s not finished in the journal: %s", retrieve_id, error_)


class DicomGetSource:
    """:class:`ISource` over a DICOM destination: ``ClientAssociation.get`` with the storage classes in the SCP role.

    Each sub-operation's data set is written to a scratch file (under the
    spool's ``scratch`` folder) that :func:`retrieve` stores on the requester
    and then removes.

    :param requester_syntax: the requester's context's transfer syntax: the
        identifier is decoded from it and re-encoded in the source's.
    """

    def __init__(
        self,
        name: str,
        destination: Any,
        ctx: QRContext,
        proposals: Sequence[tuple[str, list[str]]],
        roles: Sequence[SCPSCURoleSelection],
        scratch: str,
        requester_syntax: str = "",
    ) -> None:
        self.name = name
        self._destination = destination
        self._ctx = ctx
        self._proposals = proposals
        self._roles = roles
        self._scratch = scratch
        self._association: Any = None
        self._requester_syntax = requester_syntax
        self._cancel_requested = False
        self._operation: Any = None

    def get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> "Deferred[SourceOutcome]":
        """Associate, then run the C-GET (see :class:`ISource`)."""
        return ensureDeferred(self._get(sop_class_uid, identifier, on_instance, on_pending))

    async def _get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> SourceOutcome:
        if self._destination is None or not hasattr(self._destination, "ae_title"):
            raise SourceUnavailable("not a DICOM destination")
        if self._ctx.connect is None:
            raise SourceUnavailable("no connector")
        try:
            self._association = await self._ctx.connect(self._destination, self._proposals, role_selections=self._roles)
        except Exception as error:  # noqa: BLE001 - any connection failure leaves the source out
            raise SourceUnavailable(f"association failed: {type(error).__name__}") from error
        if self._association.context_for_class(sop_class_uid) is None:
            raise NoGetContext("no C-GET context accepted")
        # The identifier is re-encoded in the source's context's syntax by ClientAssociation.
        dataset = decode_identifier(identifier, self._requester_syntax) if self._requester_syntax else identifier
        return await _run_client_get(self, sop_class_uid, dataset, on_instance, on_pending)

    def cancel(self) -> None:
        """C-CANCEL-RQ on the C-GET under way (PS3.7 9.3.3.3)."""
        self._cancel_requested = True
        operation = self._operation
        if operation is not None and hasattr(operation, "cancel"):
            operation.cancel()

    def close(self) -> "Deferred[None]":
        """Release the association (abort if the release fails)."""
        association, self._association = self._association, None
        if association is None or not association.is_open:
            return succeed(None)
        d: Deferred[None] = association.release()

        def aborted(failure: Failure) -> None:
            association.abort()

        d.addErrback(aborted)
        return d


async def _run_client_get(
    source: DicomGetSource, sop_class_uid: str, identifier: Any, on_instance: OnInstance, on_pending: OnPending
) -> SourceOutcome:
    """Drive ``ClientAssociation.get`` (PS3.7 9.1.3) for :class:`DicomGetSource`.

    Each sub-operation's data set goes to a Part 10 scratch file
    (``FileStoreSink``); once complete it is handed to ``on_instance``, whose
    status (after the requester's C-STORE) answers the source. Pending
    responses give the source's counts; the final gives its Failed SOP
    Instance UID List (PS3.4 C.4.3.1.3.2).
    """
    os.makedirs(source._scratch, exist_ok=True)
    association = source._association

    def on_store(rq: Any, context: Any) -> Any:
        fd, path = tempfile.mkstemp(prefix="get-", suffix=".dcm", dir=source._scratch)
        os.close(fd)

        def stored(path: str, offset: int) -> "Deferred[int]":
            return on_instance(
                ReceivedInstance(path, rq.affected_sop_class_uid, rq.affected_sop_instance_uid, context.transfer_syntax, offset)
            )

        return FileStoreSink(path, rq, context, stored, source_ae_title=source._destination.ae_title)

    stream = association.get(sop_class_uid, identifier, on_store)
    source._operation = stream
    if source._cancel_requested:
        stream.cancel()
    final: Any = None
    async for response in stream:
        rsp = response.command
        counts = SubOperations(rsp.remaining, rsp.completed or 0, rsp.failed or 0, rsp.warning or 0)
        if response.pending:
            on_pending(counts)
        else:
            final = (response, counts)
    source._operation = None
    if final is None:
        raise SourceUnavailable("no final C-GET response")
    response, counts = final
    failed_uids: tuple[str, ...] = ()
    if response.identifier:
        try:
            failed_uids = tuple(str(uid) for uid in _as_list(response.dataset().get("FailedSOPInstanceUIDList", [])))
        except Exception as error:  # noqa: BLE001 - a malformed list only loses the UIDs, not the counts
            log.info("C-GET source %s: unreadable Failed SOP Instance UID List: %s", source.name, error)
    return SourceOutcome(response.status, counts, failed_uids, getattr(response.command, "error_comment", None) or "")


def _as_list(value: Any) -> list[Any]:
    """A pydicom value as a list (a single UID is a str)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value] if value else []


# -- C-GET from a source without C-GET: a C-MOVE to the gateway itself (issue 16) ----------------------

#: Hand-over files of a relayed C-GET instance: ``getrelay-<retrieve id>-<name>.dcm`` in the spool's scratch folder.
HANDOVER_PREFIX = "getrelay-"

#: Prefixes of every scratch file a C-GET makes (:func:`sweep_scratch` removes them at start).
SCRATCH_PREFIXES: tuple[str, ...] = ("get-", HANDOVER_PREFIX, "getmorph-")

#: Seconds between two looks at the scratch folder for hand-overs this process was not told about.
POLL_INTERVAL = 1.0

#: Seconds the source is given to end its C-MOVE after our C-CANCEL before its association is aborted.
SOURCE_END_WAIT = 10.0

#: The C-MOVE class (and C-FIND class locating for it) of each C-GET class (PS3.4 C.6.1.1, C.6.2.1).
MOVE_FOR_GET: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.3": "1.2.840.10008.5.1.4.1.2.1.2",  # Patient Root
    "1.2.840.10008.5.1.4.1.2.2.3": "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root
}

_UID_NAME = re.compile(r"[0-9.]{1,64}")


def handover_path(scratch: str, retrieve_id: int, sop_instance_uid: str) -> str:
    """Where the intake links a relayed C-GET instance for its handler (internal names: a UID, else its hash)."""
    name = sop_instance_uid if _UID_NAME.fullmatch(sop_instance_uid) else "h" + hashlib.sha256(sop_instance_uid.encode("utf-8", "replace")).hexdigest()[:32]
    return os.path.join(scratch, f"{HANDOVER_PREFIX}{int(retrieve_id)}-{name}.dcm")


def make_handover(spooled: str, handover: str) -> None:
    """Link the durable spool file at ``handover`` (a copy when a link cannot be made); blocking.

    The spool's clean-up may delete an instance without queue entries at any
    time once journaled; the link keeps the bytes for the C-GET handler.

    :raises OSError: when neither a link nor a copy can be made.
    """
    make_private_dirs(os.path.dirname(handover))
    unlink_if_present(handover)
    try:
        os.link(spooled, handover)
    except OSError:
        fd, temporary = tempfile.mkstemp(prefix=HANDOVER_PREFIX + "tmp-", dir=os.path.dirname(handover))
        os.close(fd)
        try:
            shutil.copyfile(spooled, temporary)
            os.replace(temporary, handover)
        except OSError:
            unlink_if_present(temporary)
            raise


def sweep_scratch(scratch: str, older_than: float | None = None, now: float = 0.0) -> int:
    """Remove the C-GET scratch files a crash left behind (at start, before the listeners; blocking).

    Only files named with :data:`SCRATCH_PREFIXES` are removed (the
    forwarder's transcoded copies in the same folder are not this module's).
    On a shared spool (several nodes, issue 14) another node's C-GET may
    still be using its files: pass ``older_than`` (seconds; the longest
    ``retrieve.timeout``, which bounds every C-GET) and only files not
    modified for that long are removed.

    :param scratch: the spool's ``scratch`` folder.
    :param older_than: remove only files older than this many seconds (``None``: all).
    :param now: the wall clock, with ``older_than``.
    :returns: how many were removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(scratch))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(SCRATCH_PREFIXES) and entry.is_file(follow_symlinks=False):
            try:
                if older_than is not None and now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                    continue  # maybe a live C-GET of another node sharing this spool
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


@dataclass(frozen=True)
class HandedOver:
    """A relayed C-GET instance in custody, linked at ``path`` for the handler."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int


class GetRelays:
    """The C-GET handlers of this process waiting for relayed instances, by retrieve ID.

    The intake (:meth:`gateway.intake.Intake._take_relayed`) calls
    :meth:`notify` once an instance is journaled; whatever association it
    came on. A handler on another node never hears it: it polls.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, Callable[[HandedOver], None]] = {}

    def register(self, retrieve_id: int, callback: Callable[[HandedOver], None]) -> None:
        """``callback`` gets each instance of ``retrieve_id`` journaled from now on (on the reactor)."""
        self._waiting[int(retrieve_id)] = callback

    def unregister(self, retrieve_id: int) -> None:
        """Stop waiting (the relay leg ended)."""
        self._waiting.pop(int(retrieve_id), None)

    def notify(self, retrieve_id: int, path: str, record: Any) -> bool:
        """An instance of ``retrieve_id`` is journaled and linked at ``path``; ``False``: nobody here waits for it."""
        callback = self._waiting.get(int(retrieve_id))
        if callback is None:
            return False
        callback(
            HandedOver(
                path,
                record.sop_class_uid,
                record.sop_instance_uid,
                record.transfer_syntax_uid,
                int(record.dataset_offset or 0),
            )
        )
        return True


#: This process's registry (the intake and every C-GET handler share it).
RELAYS = GetRelays()


def _read_handover(path: str) -> HandedOver | None:
    """A hand-over file found by polling, from its Part 10 meta (``None``: gone or unreadable); blocking."""
    try:
        header = read_part10_header(path)
    except (OSError, ValueError) as error:
        log.info("C-GET hand-over %s unreadable: %s", path, error)
        return None
    return HandedOver(path, header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid, header.dataset_offset)


def _list_handovers(scratch: str, retrieve_id: int) -> list[str]:
    """The hand-over files of one retrieve now in the scratch folder; blocking."""
    prefix = f"{HANDOVER_PREFIX}{int(retrieve_id)}-"
    try:
        return sorted(e.path for e in os.scandir(scratch) if e.name.startswith(prefix) and e.name.endswith(".dcm"))
    except FileNotFoundError:
        return []


def _run_blocking(ctx: QRContext, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """Run a file operation off the reactor (``ctx.extra["get.file_runner"]`` in tests)."""
    runner = ctx.extra.get("get.file_runner")
    if runner is not None:
        d: Deferred[Any] = runner.run(f, *args)
        return d
    from twisted.internet import threads

    return threads.deferToThreadPool(ctx.reactor, ctx.reactor.getThreadPool(), f, *args)


class MoveRelaySource:
    """:class:`ISource` for a source without C-GET: locate (C-FIND), then C-MOVE to the gateway's own AE title.

    The retrieve is journaled (kind ``get``, items EXPECTED from the locating
    C-FIND, an outgoing Message ID unique among the open retrieves of every
    node, :meth:`~gateway.queue.retrieves.IRetrieveJournal.open_retrieve`).
    The source's sub-operation C-STOREs come on an association of their own,
    to any node; the intake matches each by Message ID and SOP Instance UID,
    takes it into custody (spool, journal, no queue entry) and links it to a
    hand-over file (:func:`make_handover`), then tells this process's
    :data:`RELAYS`. Each is handed to ``on_instance`` (stored back on the
    requester's association) and its item ends COMPLETED, WARNING or FAILED
    in the journal; the hand-over file is removed. Every
    :data:`POLL_INTERVAL` the scratch folder is also read for hand-overs of
    this retrieve nobody told us about (received by another node sharing the
    spool), each confirmed in the journal before it is sent.

    The leg ends when every expected instance was handed over, or once the
    source's final C-MOVE-RSP came and one last look found nothing more (the
    intake journals a sub-operation before its C-STORE-RSP, so the source's
    final response comes after every instance it sent is journaled): what was
    not received counts failed and is listed. A cancel (the requester's
    C-CANCEL, or ``retrieve.timeout``) cancels the source's C-MOVE (PS3.7
    9.3.2.3) and waits :data:`SOURCE_END_WAIT` for its end before aborting.
    """

    def __init__(
        self,
        name: str,
        destination: Any,
        ctx: QRContext,
        scratch: str,
        requester_syntax: str,
        new_retrieve: Callable[[tuple[Any, ...], str], Any],
        open_link: Any = None,
        relays: GetRelays | None = None,
    ) -> None:
        from gateway.qr.move import open_source_link

        self.name = name
        self._destination = destination
        self._ctx = ctx
        self._scratch = scratch
        self._requester_syntax = requester_syntax
        self._new_retrieve = new_retrieve
        self._open_link = open_link if open_link is not None else ctx.extra.get("open_source", open_source_link)
        self._relays = relays if relays is not None else RELAYS
        self._link: Any = None
        self._cancelled = False
        self._wake: Deferred[None] | None = None
        self._arrived: list[HandedOver] = []
        self.retrieve_id: int | None = None

    def get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> "Deferred[SourceOutcome]":
        """Locate, journal, C-MOVE to the gateway, hand each instance over (see :class:`ISource`)."""
        return ensureDeferred(self._get(sop_class_uid, identifier, on_instance, on_pending))

    def cancel(self) -> None:
        """C-CANCEL-RQ on the source's C-MOVE (PS3.7 9.3.2.3); no further instance is handed over."""
        self._cancelled = True
        if self._link is not None:
            try:
                self._link.cancel()
            except Exception as error:  # noqa: BLE001 - the end is waited for anyway
                log.warning("C-GET relay: cancelling %s failed: %s", self.name, error)
        self._poke()

    def close(self) -> "Deferred[None]":
        """Release the source's association (abort when the release fails)."""
        link, self._link = self._link, None
        if link is None:
            return succeed(None)
        d: Deferred[None] = link.release()

        def aborted(_: Failure) -> None:
            link.abort()

        d.addErrback(aborted)
        return d

    def _poke(self) -> None:
        """Wake the hand-over loop."""
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    async def _sleep(self, delay: float) -> None:
        """Until :meth:`_poke` (an arrival, the source's end, a cancel) or ``delay`` seconds."""
        wake: Deferred[None] = Deferred()
        self._wake = wake
        timer = self._ctx.reactor.callLater(max(0.0, delay), self._poke)
        await wake
        if timer.active():
            timer.cancel()

    def _arrive(self, handed: HandedOver) -> None:
        """The intake's notice (on the reactor)."""
        self._arrived.append(handed)
        self._poke()

    async def _get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> SourceOutcome:
        from gateway.qr.move import FIND_FOR_MOVE, located_reference, locate_identifier

        ctx = self._ctx
        move_class = MOVE_FOR_GET.get(sop_class_uid)
        if move_class is None:
            raise SourceUnavailable("not a C-GET SOP class")
        find_class = FIND_FOR_MOVE[move_class]
        if self._destination is None or not hasattr(self._destination, "ae_title"):
            raise SourceUnavailable("not a DICOM destination")
        if ctx.journal is None or not hasattr(ctx.journal, "open_retrieve") or not ctx.ae_title:
            raise SourceUnavailable("no C-GET context accepted, and no journal to relay a C-MOVE through")
        request = decode_identifier(identifier, self._requester_syntax) if self._requester_syntax else identifier
        try:
            self._link = await self._open_link(ctx, self._destination, (find_class, move_class))
        except Exception as error:  # noqa: BLE001 - any connection failure leaves the source out
            raise SourceUnavailable(f"association for C-MOVE failed: {type(error).__name__}") from error
        found: list[Any] = []
        seen: set[str] = set()

        def on_match(dataset: Any) -> None:
            reference = located_reference(dataset)
            if reference is not None and reference.sop_instance_uid not in seen:
                seen.add(reference.sop_instance_uid)
                found.append(reference)

        try:
            status = await self._link.find(find_class, locate_identifier(request), on_match)
        except Exception as error:  # noqa: BLE001 - a locating failure leaves the source out
            raise SourceUnavailable(f"locating C-FIND failed: {error}") from error
        if self._cancelled:
            return SourceOutcome(int(Status.CANCEL), SubOperations(0, 0, 0, 0))
        if status != Status.SUCCESS:
            raise SourceUnavailable(f"locating C-FIND status 0x{status:04X}")
        if not found:
            return SourceOutcome(int(Status.SUCCESS), SubOperations(0, 0, 0, 0))
        from gateway.queue.retrieves import RetrieveIdsExhausted

        try:
            opened = await ctx.run.run(ctx.journal.open_retrieve, self._new_retrieve(tuple(found), self.name), ctx.wall())
        except RetrieveIdsExhausted:
            return SourceOutcome(UNABLE_TO_PERFORM_SUB_OPERATIONS, SubOperations(0, 0, 0, 0), error_comment="No C-MOVE message ID free")
        self.retrieve_id = int(opened.retrieve_id)
        self._relays.register(self.retrieve_id, self._arrive)
        try:
            return await self._relay(opened, move_class, request, [r.sop_instance_uid for r in found], on_instance, on_pending)
        except SourceUnavailable:
            raise
        except Exception as error:
            # Unexpected: the leg's record must not stay open (its Message ID held).
            from gateway.queue.retrieves import RetrieveState

            await self._finish(self.retrieve_id, RetrieveState.FAILED, f"internal error: {type(error).__name__}")
            raise
        finally:
            self._relays.unregister(self.retrieve_id)
            for path in await _run_blocking(ctx, _list_handovers, self._scratch, self.retrieve_id):
                _remove(path)

    async def _relay(
        self, opened: Any, move_class: str, request: Any, expected: list[str], on_instance: OnInstance, on_pending: OnPending
    ) -> SourceOutcome:
        """The C-MOVE to the gateway and the hand-over loop; returns the leg's outcome."""
        from gateway.queue.retrieves import ItemState, RetrieveState

        ctx = self._ctx
        retrieve_id = int(opened.retrieve_id)
        wanted = set(expected)
        handed: dict[str, str] = {}  # SOP Instance UID -> completed/warning/failed
        looked: set[str] = set()  # hand-over paths already read by a poll
        source_end: list[Any] = []
        moving = self._link.move(move_class, ctx.ae_title, request, opened.message_id, lambda counts: None)

        def ended(result: Any) -> None:
            source_end.append(result)
            self._poke()

        moving.addBoth(ended)

        async def poll() -> None:
            """Hand-overs this process was not told about, each confirmed in the journal (a committed record)."""
            for path in await _run_blocking(ctx, _list_handovers, self._scratch, retrieve_id):
                if path in looked:
                    continue
                handed_over = await _run_blocking(ctx, _read_handover, path)
                if handed_over is None or handed_over.sop_instance_uid not in wanted or handed_over.sop_instance_uid in handed:
                    continue
                records = await ctx.run.run(ctx.journal.find, None, handed_over.sop_instance_uid)
                if any(record.received_at >= opened.created_at for record, _ in records):
                    looked.add(path)
                    self._arrived.append(handed_over)

        async def record(uid: str, state: Any, reason: str) -> None:
            try:
                await ctx.run.run(ctx.journal.item_outcome, retrieve_id, uid, state, reason, ctx.wall())
            except Exception as error:  # noqa: BLE001 - the count is the requester's; the record is lost, logged
                log.warning("C-GET relay: item %s of retrieve %s not recorded: %s", uid, retrieve_id, error)

        states = {"completed": ItemState.COMPLETED, "warning": ItemState.WARNING, "failed": ItemState.FAILED}
        last_poll = ctx.reactor.seconds()
        final_look = False
        cancel_deadline: float | None = None
        while True:
            while self._arrived:
                item = self._arrived.pop(0)
                uid = item.sop_instance_uid
                if uid not in wanted or uid in handed or self._cancelled:
                    _remove(item.path)
                    continue
                instance = ReceivedInstance(item.path, item.sop_class_uid, uid, item.transfer_syntax_uid, item.dataset_offset)
                await on_instance(instance)
                outcome = instance.outcome[0] if instance.outcome else "failed"
                handed[uid] = outcome
                await record(uid, states[outcome], "" if outcome == "completed" else "requester: " + outcome)
                on_pending(SubOperations(len(wanted) - len(handed), 0, 0, 0))
            if len(handed) == len(wanted) or (self._cancelled and source_end):
                break
            if source_end and not self._cancelled:
                if final_look:
                    break
                # The source is done: one last look for what another node journaled.
                final_look = True
                await poll()
                continue
            if ctx.reactor.seconds() - last_poll >= POLL_INTERVAL:
                last_poll = ctx.reactor.seconds()
                await poll()
                if self._arrived:
                    continue
            now = ctx.reactor.seconds()
            delay = POLL_INTERVAL
            if self._cancelled and not source_end:
                # Cancelled (C-CANCEL, retrieve.timeout, the requester gone): the
                # source has SOURCE_END_WAIT to end its C-MOVE, else it is aborted.
                if cancel_deadline is None:
                    cancel_deadline = now + SOURCE_END_WAIT
                if now >= cancel_deadline:
                    log.warning("C-GET relay: source %s did not end its C-MOVE after C-CANCEL; aborting", self.name)
                    link, self._link = self._link, None
                    if link is not None:
                        link.abort()
                    break
                delay = cancel_deadline - now
            await self._sleep(delay)
        if not source_end and self._link is not None:
            # Everything was handed over before the source's final C-MOVE-RSP
            # (it follows its last C-STORE-RSP): wait for it before releasing
            # (no A-RELEASE with an operation outstanding); abort a source that never answers.
            until = ctx.reactor.seconds() + SOURCE_END_WAIT
            while not source_end and ctx.reactor.seconds() < until:
                await self._sleep(until - ctx.reactor.seconds())
            if not source_end:
                log.warning("C-GET relay: source %s sent everything but no final C-MOVE response; aborting", self.name)
                link, self._link = self._link, None
                if link is not None:
                    link.abort()
        missing = [uid for uid in expected if uid not in handed]
        result = source_end[0] if source_end else None
        if isinstance(result, Failure):
            log.warning("C-GET relay: source %s C-MOVE failed: %s", self.name, result.getErrorMessage())
        if self._cancelled:
            await self._finish(retrieve_id, RetrieveState.CANCELLED, "cancelled")
            return SourceOutcome(int(Status.CANCEL), SubOperations(len(missing), len(handed), 0, 0))
        if not handed and (isinstance(result, Failure) or (result is not None and category(result.status) is StatusCategory.FAILURE)):
            # Nothing came: the source refused (e.g. 0xA801, it does not know
            # the gateway's AE title) or its association broke; the next source may do.
            reason = result.getErrorMessage() if isinstance(result, Failure) else f"status 0x{result.status:04X}"
            await self._finish(retrieve_id, RetrieveState.FAILED, f"source C-MOVE to the gateway: {reason}")
            if isinstance(result, Failure):
                raise SourceUnavailable(f"C-MOVE to the gateway failed: {reason}")
            return SourceOutcome(result.status, SubOperations(0, 0, 0, 0), error_comment=f"C-MOVE to the gateway: {reason}")
        for uid in missing:
            await record(uid, ItemState.FAILED, "not received from the source")
        await self._finish(retrieve_id, RetrieveState.DONE, f"{len(missing)} not received" if missing else "")
        status = int(Status.SUCCESS) if not missing else SUB_OPERATIONS_WITH_FAILURES
        return SourceOutcome(status, SubOperations(0, len(handed), len(missing), 0), tuple(missing))

    async def _finish(self, retrieve_id: int, state: Any, error: str) -> None:
        """End the relay leg's retrieve in the journal (its message ID is free again)."""
        ctx = self._ctx
        try:
            await ctx.run.run(ctx.journal.finish_retrieve, retrieve_id, state, error, ctx.wall())
        except Exception as error_:  # noqa: BLE001 - logged; the requester has its counts
            log.warning("C-GET relay: retrieve %s not finished in the journal: %s", retrieve_id, error_)


class GetOrMoveSource:
    """:class:`ISource`: the source's own C-GET, or, when it accepts no C-GET context, :class:`MoveRelaySource`."""

    def __init__(self, direct: ISource, relay: Callable[[], ISource]) -> None:
        self.name = direct.name
        self._direct = direct
        self._relay = relay
        self._current: ISource = direct
        self._cancelled = False

    def get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> "Deferred[SourceOutcome]":
        """C-GET; on :class:`NoGetContext`, release that association and relay through a C-MOVE."""
        return ensureDeferred(self._get(sop_class_uid, identifier, on_instance, on_pending))

    async def _get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> SourceOutcome:
        try:
            return await self._direct.get(sop_class_uid, identifier, on_instance, on_pending)
        except NoGetContext:
            log.info("C-GET source %s accepts no C-GET: retrieving by C-MOVE to the gateway", self.name)
        close = self._direct.close()
        close.addErrback(lambda f: None)
        await close
        self._current = self._relay()
        if self._cancelled:
            # Cancelled while switching (C-CANCEL, deadline): the relay starts cancelled.
            self._current.cancel()
        return await self._current.get(sop_class_uid, identifier, on_instance, on_pending)

    def cancel(self) -> None:
        """Cancel whichever is under way (and the relay, should it start later)."""
        self._cancelled = True
        self._current.cancel()

    def close(self) -> "Deferred[None]":
        """Release whichever is under way."""
        return self._current.close()


def source_for(retrieve_by: str, direct: Callable[[], ISource], relay: Callable[[], ISource]) -> ISource:
    """The source adapter a destination's ``retrieve_by`` asks for: ``get``, ``move`` or ``auto`` (:class:`GetOrMoveSource`)."""
    if retrieve_by == "get":
        return direct()
    if retrieve_by == "move":
        return relay()
    return GetOrMoveSource(direct(), relay)


class RouteMorph:
    """:data:`Prepare` applying a route's morph plan (``retrieve.route``) to a C-GET instance before it is stored back.

    The copy is written by the splice writer (:func:`gateway.splice.morph_copy`,
    the forwarder's machinery) into the scratch folder; the received file is
    never modified. A morph that fails fails the sub-operation.
    """

    def __init__(self, plan: Any, scratch: str, run: Callable[..., "Deferred[Any]"], context: Any) -> None:
        self._plan = plan
        self._scratch = scratch
        self._run = run
        self._context = context

    def __call__(self, instance: ReceivedInstance) -> "Deferred[ReceivedInstance]":
        """The morphed copy's instance (its path, SOP Instance UID and data set offset)."""
        return self._run(self._make, instance)

    def _make(self, instance: ReceivedInstance) -> ReceivedInstance:
        """Blocking: write the copy and read its meta back."""
        from gateway.splice import morph_copy

        make_private_dirs(self._scratch)
        fd, path = tempfile.mkstemp(prefix="getmorph-", suffix=".dcm", dir=self._scratch)
        os.close(fd)
        try:
            source = instance.path
            morph_copy(source, path, self._plan, self._context)
            header = read_part10_header(path)
        except Exception:
            unlink_if_present(path)
            raise
        return ReceivedInstance(path, header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid, header.dataset_offset)


class SyntaxFit:
    """:data:`Prepare` re-encoding an instance in a native syntax the requester accepted for its class (SCP role).

    A source's C-GET sub-operations come in a syntax the requester accepted
    (:func:`source_proposals` offers the source the requester's own), but
    those of a C-MOVE to the gateway come in whatever the source and the
    gateway's storage SCP agreed. When the requester accepted the class only
    in another native syntax (Implicit/Explicit VR Little Endian, PS3.5
    A.1-A.2), the copy is re-encoded losslessly (:func:`gateway.transcode.transcode`);
    otherwise the instance goes as it is (and, with no context, is a failed
    sub-operation, PS3.4 C.4.3.3).
    """

    def __init__(self, contexts: Mapping[int, Any], scratch: str, run: Callable[..., "Deferred[Any]"]) -> None:
        self._contexts = contexts
        self._scratch = scratch
        self._run = run

    def target(self, sop_class_uid: str, transfer_syntax_uid: str) -> str | None:
        """The syntax to re-encode into, or ``None`` (already accepted, or nothing native accepted)."""
        from gateway.transcode import NATIVE_SYNTAXES

        accepted = [c.transfer_syntax for c in self._contexts.values() if c.abstract_syntax == sop_class_uid and c.scp_role]
        if transfer_syntax_uid in accepted or transfer_syntax_uid not in NATIVE_SYNTAXES:
            return None
        return next((ts for ts in accepted if ts in NATIVE_SYNTAXES), None)

    def __call__(self, instance: ReceivedInstance) -> "Deferred[ReceivedInstance]":
        """The instance itself, or its re-encoded copy in the scratch folder."""
        target = self.target(instance.sop_class_uid, instance.transfer_syntax_uid)
        if target is None:
            return succeed(instance)
        return self._run(self._make, instance, target)

    def _make(self, instance: ReceivedInstance, target: str) -> ReceivedInstance:
        """Blocking: write the re-encoded copy."""
        from gateway.transcode import transcode

        make_private_dirs(self._scratch)
        fd, path = tempfile.mkstemp(prefix="getmorph-", suffix=".dcm", dir=self._scratch)
        os.close(fd)
        try:
            transcode(instance.path, path, target)
            header = read_part10_header(path)
        except Exception:
            unlink_if_present(path)
            raise
        return ReceivedInstance(path, instance.sop_class_uid, instance.sop_instance_uid, target, header.dataset_offset)


def chain(*steps: Prepare | None) -> Prepare | None:
    """One :data:`Prepare` running ``steps`` in order; an intermediate copy is removed once the next is made."""
    present = [step for step in steps if step is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    async def run(instance: ReceivedInstance) -> ReceivedInstance:
        current = instance
        for step in present:
            try:
                made = await step(current)
            except Exception:
                if current is not instance:
                    _remove(current.path)
                raise
            if current is not instance and made is not current:
                _remove(current.path)
            current = made
        return current

    return lambda instance: ensureDeferred(run(instance))
